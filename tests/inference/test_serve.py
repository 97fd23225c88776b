"""`bitnet serve` end to end: the official `openai` client against a live server on 127.0.0.1.

The server runs in a thread (uvicorn) on a tiny export; a wrapper around its engine can slow each
step down, so that requests stay in flight long enough to disconnect, fill the queue or shut down.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai  # a dev dependency: missing, the suite fails here instead of skipping every test
import pytest
from engine_helpers import export, tiny, tokenizer
from serve_helpers import CTX, MESSAGES, NAME, PARALLEL, QUEUE, SYSTEM, TIMEOUT_S, VOCAB, Server, _free_port, \
    _request, _wait_health

from bitnet.inference import Engine

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(tiny(seed=5, vocab_size=VOCAB), tmp_path_factory.mktemp("serve") / "m", tokenizer())


@pytest.fixture(scope="module")
def engine(model_dir):
    """The reference: one Engine, one request at a time."""
    return Engine(model_dir, threads=2)


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir)
    yield s
    s.stop()
    assert not s.scheduler.running


@pytest.fixture
def slow(server):
    """The server's engine pauses 20 ms per step during the test."""
    server.engine.delay = 0.02
    yield server
    server.engine.delay = 0.0


def _busy(server) -> int:
    return _request(server.port, "GET", "/health")[1]["slots_busy"]


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == [NAME]
    status, body = _request(server.port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["slots"] == PARALLEL and body["ctx_size"] == CTX


def test_chat_greedy_equals_engine_streaming_and_not(server, engine):
    want = "".join(engine.chat_stream(MESSAGES, max_new_tokens=24))
    client = server.client()
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(engine.chat_ids(MESSAGES))
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")
    chunks = list(client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # the second request found the whole prompt but its last token cached in a free slot
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1


def test_completions_text_token_ids_and_seeded_sampling(server, engine):
    client = server.client()
    r = client.completions.create(model=NAME, prompt="the quick brown", max_tokens=16, temperature=0)
    assert r.choices[0].text == engine.generate("the quick brown", max_new_tokens=16)
    ids = engine.tokenizer.encode("to be or").ids
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0.9, seed=7, top_p=0.95)
    want = engine.tokenizer.decode(engine.generate(ids, max_new_tokens=16, temperature=0.9, seed=7, top_p=0.95))
    assert r.choices[0].text == want and r.usage.prompt_tokens == len(ids)
    stream = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0.9, seed=7, top_p=0.95,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == want
    stop = want[3:6]
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0.9, seed=7, top_p=0.95,
                                  stop=[stop])
    assert r.choices[0].text == want[:want.index(stop)] and r.choices[0].finish_reason == "stop"


def test_eight_concurrent_clients_each_get_what_they_get_alone(slow, engine):
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(8):
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": " ".join(rng.choice(["to", "be", "or", "not", "fox", "dog"], 3 + i))}]
        sampling = dict(temperature=0.0) if i % 2 else dict(temperature=0.8, seed=i)
        jobs.append((msgs, sampling, 12 + i))
    want = ["".join(engine.chat_stream(m, max_new_tokens=n, **s)) for m, s, n in jobs]
    client = slow.client()
    n_steps = len(slow.engine.batch_sizes)

    def run(job):
        m, s, n = job
        return client.chat.completions.create(model=NAME, messages=m, max_tokens=n, **s).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, jobs))
    assert got == want
    assert max(slow.engine.batch_sizes[n_steps:]) == PARALLEL  # they really shared steps


def test_client_that_disconnects_mid_stream_frees_its_slot(slow):
    before = slow.scheduler.status()
    stream = slow.client().completions.create(model=NAME, prompt="to be", max_tokens=200, temperature=0,
                                              stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert _busy(slow) == 1
    stream.close()
    t0 = time.monotonic()
    while _busy(slow) and time.monotonic() - t0 < TIMEOUT_S:
        time.sleep(0.02)
    st = slow.scheduler.status()
    assert st["slots_busy"] == 0 and st["cancelled"] == before["cancelled"] + 1
    assert st["generated_tokens"] - before["generated_tokens"] < 200  # cancelled, not run to its end


BAD = [  # (name, path, body, status, error code)
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, "invalid_json"),
    ("not an object", "/v1/completions", b"[1, 2]", 400, "invalid_json"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES}, 404, "model_not_found"),
    ("missing messages", "/v1/chat/completions", {"model": NAME}, 400, "missing_required_parameter"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, 400, "empty_array"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value"),
    ("negative max_tokens", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": -5}, 400,
     "integer_below_min_value"),
    ("string temperature", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "invalid_type"),
    ("missing prompt", "/v1/completions", {"model": NAME}, 400, "missing_required_parameter"),
    ("token id out of range", "/v1/completions", {"prompt": [1, VOCAB]}, 400, "invalid_value"),
    ("prompt longer than the context", "/v1/completions", {"prompt": [1] * (CTX + 1)}, 400,
     "context_length_exceeded"),
    ("chat longer than the context", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "to be or not " * CTX}]}, 400, "context_length_exceeded"),
    ("unknown route", "/v1/embeddings", {"input": "x"}, 404, "not_found"),
]


@pytest.mark.parametrize("name,path,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_an_openai_error_body(server, name, path, body, status, code):
    got, resp = _request(server.port, "POST", path, body)
    assert got == status
    assert set(resp["error"]) == {"message", "type", "param", "code"} and resp["error"]["code"] == code
    assert _request(server.port, "GET", "/health")[0] == 200  # and the server lives on


def test_openai_client_raises_on_bad_input(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="nope", messages=MESSAGES)


def test_full_queue_is_429(slow):
    client = slow.client()
    streams = [client.completions.create(model=NAME, prompt="to be", max_tokens=100, temperature=0, stream=True,
                                         extra_body={"ignore_eos": True}) for _ in range(PARALLEL + QUEUE)]
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model=NAME, prompt="to be", max_tokens=5)
        assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
    finally:
        for s in streams:
            s.close()
    t0 = time.monotonic()
    while _request(slow.port, "GET", "/health")[1]["queued"] + _busy(slow) and time.monotonic() - t0 < TIMEOUT_S:
        time.sleep(0.02)
    assert client.completions.create(model=NAME, prompt="to be", max_tokens=2).usage.completion_tokens >= 1


def test_shutdown_lets_running_streams_finish(model_dir):
    s = Server(model_dir, parallel=2)
    s.engine.delay = 0.02
    stream = s.client().completions.create(model=NAME, prompt="to be", max_tokens=40, temperature=0, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    it = iter(stream)
    next(it)
    s.stop()  # what SIGTERM does: no new connections, running streams finish, then the scheduler stops
    rest = list(it)
    assert rest[-2].choices[0].finish_reason == "length" and rest[-1].usage.completion_tokens == 40
    assert not s.scheduler.running


def test_cli_serve_and_sigterm(model_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bitnet", "serve", str(model_dir), "--port", str(port),
                             "--parallel", "2", "--threads", "1", "--ctx-size", "64", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_health(port, proc)
        status, body = _request(port, "POST", "/v1/completions", {"prompt": "to be", "max_tokens": 4})
        assert status == 200 and body["object"] == "text_completion" and body["usage"]["prompt_tokens"] > 0
        assert _request(port, "GET", "/v1/models")[1]["data"][0]["id"] == model_dir.name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
