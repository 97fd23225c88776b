"""What an operator relies on: API keys, /metrics, request and stall time limits, the access log."""

from __future__ import annotations

import asyncio
import json
import logging

import openai
import pytest
from engine_helpers import export, tiny, tokenizer
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import NAME, TIMEOUT_S, VOCAB, Server, _request
from test_scheduler import FakeEngine, drive, req

from bitnet.inference.scheduler import AsyncStream, Request, RequestStatus, Scheduler
from bitnet.inference.sampling import SamplingParams

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)

KEY = "sk-test-0123456789abcdef"
GOOD = {"prompt": "to be", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(tiny(seed=5, vocab_size=VOCAB), tmp_path_factory.mktemp("ops") / "m", tokenizer())


@pytest.fixture(scope="module")
def keyed(model_dir):
    s = Server(model_dir, api_keys=(KEY, "sk-second"), log_format="json")
    yield s
    s.stop()


def test_requests_without_a_valid_key_are_401_and_the_key_is_never_logged(keyed, caplog):
    with caplog.at_level(logging.DEBUG):
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}):
            status, body = _request(keyed.port, "POST", "/v1/completions", GOOD, headers=headers)
            assert status == 401, headers
            assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert "sk-wrong" not in json.dumps(body)
        assert _request(keyed.port, "GET", "/v1/models")[0] == 401
        assert _request(keyed.port, "GET", "/health")[0] == 200  # open
        for key in (KEY, "sk-second"):
            status, body = _request(keyed.port, "POST", "/v1/completions", GOOD,
                                    headers={"Authorization": f"Bearer {key}"})
            assert status == 200 and body["usage"]["completion_tokens"] >= 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged and "sk-wrong" not in logged and "sk-second" not in logged


def test_the_openai_client_with_and_without_the_key(keyed):
    with pytest.raises(openai.AuthenticationError) as e:
        keyed.client(api_key="nope").completions.create(model=NAME, prompt="to be", max_tokens=2)
    assert e.value.status_code == 401
    r = keyed.client(api_key=KEY).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_access_log_one_json_line_per_request(keyed, caplog):
    with caplog.at_level(logging.INFO, logger="bitnet.serve.access"):
        _request(keyed.port, "POST", "/v1/completions", GOOD, headers={"Authorization": f"Bearer {KEY}"})
        _request(keyed.port, "POST", "/v1/completions", {"prompt": "x", "top_p": 0},
                 headers={"Authorization": f"Bearer {KEY}"})
        _request(keyed.port, "POST", "/v1/chat/completions", GOOD)  # no key: refused before the app
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bitnet.serve.access"]
    assert [(x["status"], x["endpoint"]) for x in lines] == [(200, "/v1/completions"), (400, "/v1/completions"),
                                                             (401, "/v1/chat/completions")]
    ok, bad, unauthorized = lines
    assert unauthorized["error"] == "invalid_api_key"
    assert ok["id"].startswith("cmpl-") and ok["prompt_tokens"] > 0 and ok["completion_tokens"] == 3
    assert ok["ttft_ms"] is not None and ok["total_ms"] >= ok["ttft_ms"] and ok["finish_reason"] == "length"
    assert bad["error"] == "integer_below_min_value" and bad["completion_tokens"] == 0  # top_p 0 is out of (0, 1]


def _samples(port: int) -> dict[tuple, float]:
    status, text = _raw_get(port, "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _raw_get(port: int, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.getheader("Content-Type").startswith("text/plain")
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_metrics_in_prometheus_text_format(keyed):
    label = (("model_name", NAME),)
    before = _samples(keyed.port)  # open without a key, as /health
    auth = {"Authorization": f"Bearer {KEY}"}
    got = [_request(keyed.port, "POST", "/v1/completions", {**GOOD, "max_tokens": n}, headers=auth)[1]
           for n in (2, 5)]
    _request(keyed.port, "POST", "/v1/completions", {"prompt": "x", "seed": -1}, headers=auth)
    after = _samples(keyed.port)

    def grew(name: str, labels: tuple = label) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("bitnet:generation_tokens_total") == sum(g["usage"]["completion_tokens"] for g in got)
    assert grew("bitnet:prompt_tokens_total") == sum(g["usage"]["prompt_tokens"] for g in got)
    assert grew("bitnet:time_to_first_token_seconds_count") == 2
    assert grew("bitnet:inter_token_latency_seconds_count") == sum(g["usage"]["completion_tokens"] - 1 for g in got)
    assert grew("bitnet:request_success_total", label + (("finished_reason", "length"),)) == 2
    assert grew("bitnet:engine_step_seconds_count") >= 5
    http = (("endpoint", "/v1/completions"),)
    assert grew("bitnet:http_requests_total", http + (("status", "200"),)) == 2
    assert grew("bitnet:http_requests_total", http + (("status", "400"),)) == 1
    assert after[("bitnet:num_requests_running", label)] == 0 and after[("bitnet:num_requests_waiting", label)] == 0
    assert after[("bitnet:num_slots", label)] == keyed.scheduler.parallel


def test_a_request_past_its_timeout_ends_with_504_and_frees_its_slot(model_dir):
    s = Server(model_dir, request_timeout=0.5)
    try:
        s.engine.delay = 0.05  # 200 tokens take 10 s: far past the timeout
        long = {"prompt": "to be", "max_tokens": 200, "ignore_eos": True}
        status, body = _request(s.port, "POST", "/v1/completions", long)
        assert status == 504 and body["error"]["code"] == "request_timeout"
        stream = s.client().completions.create(model=NAME, prompt="to be", max_tokens=200, stream=True,
                                               extra_body={"ignore_eos": True})
        with pytest.raises(openai.APIError, match="timeout"):  # the error event that ends the stream
            for _ in stream:
                pass
        s.engine.delay = 0.0
        assert s.scheduler.status()["timeouts"] == 2 and s.scheduler.status()["slots_busy"] == 0
        assert _request(s.port, "POST", "/v1/completions", GOOD)[0] == 200
    finally:
        s.stop()


# ---------------------------------------------------------------------- scheduler level, no wall time
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_timeout_on_a_controlled_clock():
    clock = Clock()
    sched = Scheduler(FakeEngine(), parallel=1, ctx_size=64, clock=clock)
    got = []
    running = sched.submit(Request([1, 2], SamplingParams(max_tokens=50, temperature=0.0), timeout=5.0), got.append)
    queued = sched.submit(Request([3], SamplingParams(max_tokens=5, temperature=0.0), timeout=5.0), got.append)
    drive(sched, lambda: len(got) >= 3)
    clock.t += 5.1
    sched.run_once()
    assert running.status is RequestStatus.FINISHED_TIMEOUT and queued.status is RequestStatus.FINISHED_TIMEOUT
    assert "timeout of 5 s" in running.error and sched.status()["timeouts"] == 2


def test_a_stream_nobody_reads_loses_its_slot():
    """AsyncStream, with its consumer never reading: past the stall limit the request is cancelled."""
    loop = asyncio.new_event_loop()
    try:
        sched = Scheduler(FakeEngine(), parallel=1, ctx_size=64)
        stream = AsyncStream(sched, req([1, 2], max_tokens=50, temperature=0.0), loop, stall_timeout=0.0)
        other = []
        sched.submit(req([5], max_tokens=2, temperature=0.0), other.append)  # waits for the slot
        drive(sched, lambda: stream.request.status.finished)
        assert stream.request.status is RequestStatus.FINISHED_CANCELLED
        assert "read nothing" in stream.request.error and stream.request.completion_tokens < 5
        drive(sched, lambda: other and other[-1].finish_reason is not None)
        assert other[-1].finish_reason == "length"  # the slot went to the next request
    finally:
        loop.close()


def test_a_failing_engine_step_stops_the_server_and_health_says_so(model_dir):
    s = Server(model_dir)
    try:
        def broken(batch):
            raise RuntimeError("simulated engine failure")

        s.engine._engine.step = broken  # the C++ step itself fails (SlowEngine forwards to it)
        status, body = _request(s.port, "POST", "/v1/completions", GOOD)
        assert status == 503 and body["error"]["code"] == "engine_error"
        assert "simulated engine failure" in body["error"]["message"]
        status, health = _request(s.port, "GET", "/health")
        assert status == 503 and health["status"] == "unavailable" and "simulated" in health["error"]
        status, body = _request(s.port, "POST", "/v1/completions", GOOD)
        assert status == 503 and body["error"]["code"] == "unavailable"
    finally:
        s.stop()


def test_api_keys_from_flags_file_and_environment(tmp_path, monkeypatch):
    from bitnet.inference.serve import _api_keys, _loopback

    f = tmp_path / "keys.txt"
    f.write_text("# operators\nsk-file-1\n\n  sk-file-2  \n")
    monkeypatch.setenv("BITNET_API_KEY", "sk-env-1, sk-env-2")
    assert _api_keys(["sk-flag", "sk-file-1"], f) == ("sk-flag", "sk-file-1", "sk-file-2", "sk-env-1", "sk-env-2")
    monkeypatch.delenv("BITNET_API_KEY")
    assert _api_keys([], None) == ()
    with pytest.raises(ValueError, match="--api-key-file"):
        _api_keys([], tmp_path / "missing.txt")
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.5") and not _loopback("example.com")
