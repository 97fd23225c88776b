"""Hostile requests against a live `bitnet serve`: each is refused with a 4xx (never a 500), and the
server keeps serving a well-behaved client after every one of them."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time

import pytest
from engine_helpers import export, tiny, tokenizer
from serve_helpers import NAME, TIMEOUT_S, VOCAB, Server, _request

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)

GOOD = {"prompt": "to be", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(export(tiny(seed=5, vocab_size=VOCAB), tmp_path_factory.mktemp("abuse") / "m", tokenizer()))
    yield s
    s.stop()


def _still_serving(server) -> None:
    status, body = _request(server.port, "GET", "/health")
    assert status == 200 and body["status"] == "ok", body
    status, body = _request(server.port, "POST", "/v1/completions", GOOD)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1, body


SAMPLING = [  # (raw JSON fragment, the field refused); Python's json (and many clients) accept NaN
    ('"temperature": NaN', "temperature"),
    ('"temperature": Infinity', "temperature"),
    ('"top_p": NaN', "top_p"),
    ('"top_p": 0', "top_p"),
    ('"seed": -1', "seed"),
    ('"seed": 1180591620717411303424', "seed"),  # 2**70
    ('"top_k": -3', "top_k"),
]


@pytest.mark.parametrize("fragment,param", SAMPLING, ids=[s[0] for s in SAMPLING])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_bad_sampling_values_are_refused_and_the_engine_lives_on(server, fragment, param, path):
    head = '"prompt": "to be"' if path == "/v1/completions" else '"messages": [{"role": "user", "content": "hi"}]'
    status, body = _request(server.port, "POST", path, f'{{{head}, "max_tokens": 3, {fragment}}}'.encode())
    assert status == 400, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"
    _still_serving(server)


def test_tiny_temperature_is_floored_not_fatal(server):
    body = {**GOOD, "temperature": 1e-308, "seed": 1}
    status, got = _request(server.port, "POST", "/v1/completions", body)
    assert status == 200 and got["usage"]["completion_tokens"] == 3
    _still_serving(server)


# ---------------------------------------------------------------------- bounded input
def _raw_exchange(port: int, head: bytes, chunks=(), limit_s: float = TIMEOUT_S) -> tuple[int, dict, int]:
    """Send ``head`` then ``chunks`` until the server answers; returns (status, JSON body, bytes of body sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    sent = 0
    try:
        s.sendall(head)
        for c in chunks:
            if select.select([s], [], [], 0)[0]:  # the server answered: stop sending
                break
            try:
                s.sendall(c)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(c)
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            assert part, "connection closed without an answer"
            data += part
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head_bytes).group(1))
        while len(rest) < length:
            part = s.recv(65536)
            assert part, "connection closed in the middle of the answer"
            rest += part
        return int(head_bytes.split()[1]), json.loads(rest[:length]), sent
    finally:
        s.close()


def test_a_body_declared_too_large_is_refused_before_it_is_sent(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n")
    status, body, _ = _raw_exchange(server.port, head)  # not one byte of the 64 MB is sent
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    _still_serving(server)


def test_a_chunked_body_is_refused_once_it_passes_the_limit(server):
    limit = server.config.max_body
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    # twice the limit, and the body never ends (no last chunk): an answer proves it was not read to the end
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(2 * limit // len(piece)))
    status, body, _ = _raw_exchange(server.port, head, chunks)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    _still_serving(server)


HOSTILE = [  # (name, raw body, status, code)
    ("100,000 nested arrays", b"[" * 100_000, 400, "invalid_json"),
    ("nested arrays in a field", b'{"prompt": "x", "extra": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400,
     "invalid_json"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', 400, "invalid_json"),
    ("n > 1", b'{"prompt": "x", "n": 2}', 400, "unsupported_value"),
    ("prompt of the wrong type", b'{"prompt": {"a": 1}}', 400, "invalid_type"),
    ("max_tokens a string", b'{"prompt": "x", "max_tokens": "5"}', 400, "invalid_type"),
    ("stream a number", b'{"prompt": "x", "stream": 1}', 400, "invalid_type"),
]


@pytest.mark.parametrize("name,raw,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_4xx_never_500(server, name, raw, status, code):
    got, body = _request(server.port, "POST", "/v1/completions", raw)
    assert got == status and body["error"]["code"] == code, body
    _still_serving(server)


def test_a_prompt_beyond_the_character_cap_is_refused_before_tokenizing(server, monkeypatch):
    calls = []
    monkeypatch.setattr(server.engine._engine, "encode", lambda *a, **k: calls.append(a) or [1])
    n = server.config.max_prompt_chars + 1
    for path, body in (("/v1/completions", {"prompt": "a" * n}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * (n // 2)},
                                                              {"role": "user", "content": "a" * (n // 2 + 1)}]})):
        status, got = _request(server.port, "POST", path, body)
        assert status == 400 and got["error"]["code"] == "context_length_exceeded"
        assert "characters" in got["error"]["message"]
    assert calls == []


def test_unknown_fields_are_logged(server, caplog):
    with caplog.at_level(logging.WARNING, logger="bitnet.serve"):
        status, _ = _request(server.port, "POST", "/v1/completions", {**GOOD, "frobnicate": 1, "logit_bias": {}})
    assert status == 200
    assert any("frobnicate" in r.getMessage() and "logit_bias" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A server whose limits let a multi-megabyte prompt through to the tokenizer."""
    s = Server(export(tiny(seed=5, vocab_size=VOCAB), tmp_path_factory.mktemp("roomy") / "m", tokenizer()),
               max_body=64 << 20, max_prompt_chars=32 << 20)
    yield s
    s.stop()


# While another request's multi-megabyte body is parsed and tokenized (on the event loop that work
# stalled every stream: 83-90 s for 64 MB), a running stream keeps receiving tokens. Checked without
# a clock threshold: parsing the large body, and tokenizing its prompt, each first wait on the thread
# that runs them until the stream has received STREAM_PROGRESS more chunks. On a worker thread that
# takes a few engine steps; run on the event loop, the wait blocks the loop that would deliver them,
# so it can only end at its deadline (shorter than the client's timeout), and the test fails.
STREAM_PROGRESS = 3


@pytest.mark.slow
def test_a_large_body_does_not_stall_other_streams(roomy, monkeypatch):
    from bitnet.inference import serve

    big_prompt = "the quick brown fox " * 250_000
    big = json.dumps({"prompt": big_prompt, "max_tokens": 1}).encode()  # 5 MB
    chunks: list = []
    ended = threading.Event()  # the stream is over: no chunk will come any more
    progressed: dict[str, bool] = {}

    def stream_moves_on(stage: str) -> None:
        n0, deadline = len(chunks), time.monotonic() + TIMEOUT_S / 3
        while len(chunks) < n0 + STREAM_PROGRESS and not ended.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        progressed[stage] = len(chunks) >= n0 + STREAM_PROGRESS

    real_parse, real_encode = serve.parse_request, roomy.engine._engine.encode

    def parse_request(model, raw):
        if len(raw) >= len(big):
            stream_moves_on("parse")
        return real_parse(model, raw)

    def encode(text, *args, **kwargs):
        if len(text) >= len(big_prompt):
            stream_moves_on("tokenize")
        return real_encode(text, *args, **kwargs)

    monkeypatch.setattr(serve, "parse_request", parse_request)
    monkeypatch.setattr(roomy.engine._engine, "encode", encode)
    roomy.engine.delay = 0.02
    result: list = []
    sender = threading.Thread(target=lambda: result.append(_request(roomy.port, "POST", "/v1/completions", big)))
    try:
        stream = roomy.client().completions.create(model=NAME, prompt="to be", max_tokens=200, temperature=0,
                                                   stream=True, stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
        for c in stream:
            chunks.append(c)
            if len(chunks) == 3:  # the stream is running: now the large body comes in
                sender.start()
        ended.set()
        sender.join(TIMEOUT_S)
    finally:
        ended.set()
        roomy.engine.delay = 0.0
    assert progressed == {"parse": True, "tokenize": True}, f"the stream stopped while the body was: {progressed}"
    assert chunks[-1].usage.completion_tokens == 200  # the stream completed
    assert result and result[0][0] == 400 and result[0][1]["error"]["code"] == "context_length_exceeded"


def test_bodies_held_at_once_are_bounded(tmp_path):
    """Slow clients each sending most of a body: past the budget of bytes held, the next gets 429."""
    s = Server(export(tiny(seed=5, vocab_size=VOCAB), tmp_path / "m", tokenizer()), max_body=64 << 10,
               body_budget=200 << 10)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (60 << 10))
    slow = []
    try:
        for _ in range(3):  # 3 x 50 KiB held (below the 200 KiB budget), none finished
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT_S)
            sk.sendall(head + b"x" * (50 << 10))
            slow.append(sk)
        wait_s = time.monotonic() + TIMEOUT_S
        while s.app.held < 150 << 10:  # the server has read them
            assert time.monotonic() < wait_s
            time.sleep(0.01)
        status, body, _ = _raw_exchange(s.port, head, [b"x" * (60 << 10)])
        assert status == 429 and body["error"]["code"] == "too_many_bodies"
    finally:
        for sk in slow:
            sk.close()
    wait_s = time.monotonic() + TIMEOUT_S
    while s.app.held:  # the slow clients went away: their bytes are released
        assert time.monotonic() < wait_s
        time.sleep(0.01)
    assert _request(s.port, "POST", "/v1/completions", GOOD)[0] == 200
    s.stop()
