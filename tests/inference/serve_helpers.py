"""A live `bitnet serve` for tests: uvicorn in a thread on a tiny export, and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import replace

import openai

from bitnet.inference import Engine
from bitnet.inference.scheduler import Scheduler
from bitnet.inference.serve import ServeConfig, create_app, serve_limits

VOCAB = 304  # the test tokenizer's 300 ids, rounded up
CTX = 256  # = the tiny model's max_position_embeddings, so a request may run as long as Engine.generate
PARALLEL, QUEUE = 4, 4
NAME = "tiny-test"
TIMEOUT_S = 30.0  # bound on every client call and wait
SYSTEM = "You are a helpful assistant. " * 4
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "to be or not to be"}]


class SlowEngine:
    """The engine with an adjustable pause after each step (attributes pass through); records batch sizes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.delay = 0.0
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def step(self, batch):
        out = self._engine.step(batch)
        self.batch_sizes.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(port: int, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT_S:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if _request(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not come up")


def _request(port: int, method: str, path: str, body: bytes | str | dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


class Server:
    """uvicorn on a free port in a thread, serving ``create_app`` on a SlowEngine-wrapped Engine."""

    def __init__(self, model_dir, parallel: int = PARALLEL, queue: int = QUEUE, **config) -> None:
        """``config``: ServeConfig fields that differ from the defaults for CTX (api_keys, max_body, ...)."""
        import uvicorn

        self.engine = SlowEngine(Engine(model_dir, threads=2))
        self.scheduler = Scheduler(self.engine, parallel=parallel, ctx_size=CTX, max_queue=queue, prefill_chunk=16)
        self.port = _free_port()
        chars, body = serve_limits(CTX, self.engine.tokenizer)
        self.config = replace(ServeConfig(model_name=NAME, max_body=body, max_prompt_chars=chars), **config)
        self.app = app = create_app(self.engine, self.scheduler, config=self.config)
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     timeout_graceful_shutdown=TIMEOUT_S))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        _wait_health(self.port)

    def client(self, api_key: str = "unused"):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=api_key, timeout=TIMEOUT_S,
                             max_retries=0)

    def stop(self) -> None:
        self.uvicorn.should_exit = True  # what SIGTERM / SIGINT do
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


