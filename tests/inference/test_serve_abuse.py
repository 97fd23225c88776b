"""Hostile requests against a live `bitnet serve`: each is refused with a 4xx (never a 500), and the
server keeps serving a well-behaved client after every one of them."""

from __future__ import annotations

import pytest
from engine_helpers import export, tiny, tokenizer
from serve_helpers import VOCAB, Server, _request

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
