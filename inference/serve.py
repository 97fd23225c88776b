"""``bitnet serve``: an OpenAI-compatible HTTP server on the C++ engine, with continuous batching.

    bitnet serve out/export --port 8000 --parallel 8 --ctx-size 2048 --threads 2

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent
events in OpenAI's chunk format, ending with ``data: [DONE]``, or whole), ``GET /v1/models`` and
``GET /health``. Chat prompts use the export's chat template (``Engine.apply_chat_template``).
Generation runs on the :class:`~bitnet.inference.scheduler.Scheduler`'s engine thread; the event
loop only parses, queues and forwards text, so it never waits for the engine.

Request fields: ``model`` (optional; when given it must be the served name), ``messages`` /
``prompt`` (a string or a list of token ids), ``max_tokens`` (or ``max_completion_tokens``;
default: until the slot's context is full), ``temperature`` (default 1, 0 = greedy), ``top_p``,
``seed``, ``stop`` (a string or a list), ``stream``, ``stream_options.include_usage``; extensions
``top_k`` and ``ignore_eos`` (generate exactly ``max_tokens``, for benchmarks). Errors are 4xx with
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``; a full queue is 429.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .engine import END_OF_TURN
from .scheduler import (DEFAULT_PREFILL_CHUNK, PREFILL_ALONE, AsyncStream, Delta, PromptTooLong, QueueFull, Request,
                        Scheduler, SchedulerStopped)

__all__ = ["create_app", "main", "APIError"]

DEFAULT_CTX = 2048  # --ctx-size default (capped at the model's max_position_embeddings)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------- request parsing
_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", dict: "an object"}


def _field(body: dict, name: str, kinds: tuple[type, ...], default: Any = None, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    """body[name] checked for type and range (null = absent = ``default``); raises APIError 400."""
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise APIError(400, f"Invalid type for '{name}': expected {_KIND_NAMES[kinds[0]]}, got "
                            f"{json.dumps(v)[:50]}.", param=name, code="invalid_type")
    if lo is not None and v < lo:
        raise APIError(400, f"Invalid '{name}': {v} is below the minimum value {lo}.", param=name,
                       code="integer_below_min_value" if isinstance(v, int) else "decimal_below_min_value")
    if hi is not None and v > hi:
        raise APIError(400, f"Invalid '{name}': {v} is above the maximum value {hi}.", param=name,
                       code="integer_above_max_value" if isinstance(v, int) else "decimal_above_max_value")
    return v


def _sampling(body: dict) -> dict:
    """The generation fields common to both endpoints, checked."""
    max_tokens = _field(body, "max_tokens", (int,), lo=1)
    if max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", (int,), lo=1)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise APIError(400, "Invalid 'stop': expected a string or an array of strings.", param="stop",
                       code="invalid_type")
    if _field(body, "n", (int,), 1) != 1:
        raise APIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
    if _field(body, "logprobs", (int, bool), False):
        raise APIError(400, "logprobs are not supported by this server.", param="logprobs", code="unsupported_value")
    top_k = _field(body, "top_k", (int,), 0, lo=0)
    return dict(max_tokens=max_tokens, temperature=float(_field(body, "temperature", (float, int), 1.0, lo=0, hi=2)),
                top_p=_field(body, "top_p", (float, int), None, lo=0, hi=1), top_k=top_k or None,
                seed=_field(body, "seed", (int,)), stop=stops, ignore_eos=_field(body, "ignore_eos", (bool,), False))


def _content(msg: dict, i: int) -> str:
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise APIError(400, f"Invalid 'messages[{i}].content': expected a string or an array of text parts.",
                   param=f"messages[{i}].content", code="invalid_type")


def _messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "Missing required parameter: 'messages'.", param="messages",
                       code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "Invalid 'messages': expected a non-empty array of messages.", param="messages",
                       code="invalid_type" if not isinstance(msgs, list) else "empty_array")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"Invalid 'messages[{i}]': expected an object with a role of "
                                f"{sorted(ROLES)} and a content.", param=f"messages[{i}]", code="invalid_value")
        out.append({"role": ROLES[m["role"]], "content": _content(m, i)})
    return out


# ---------------------------------------------------------------------- responses
def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def _usage(d: Delta) -> dict:
    return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
            "total_tokens": d.prompt_tokens + d.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": d.cached_tokens}}


def _stream_error(d: Delta) -> APIError:
    if d.finish_reason == "error":
        return APIError(503, d.error or "the engine failed", type="server_error", code="engine_error")
    return APIError(503, "The request was cancelled: the server is shutting down.", type="server_error",
                    code="cancelled")


def create_app(engine, scheduler: Scheduler, model_name: str):
    """The FastAPI app serving ``engine`` through ``scheduler`` (started and stopped by the app's lifespan).

    ``engine`` supplies the tokenizer, chat template and eos id; ``scheduler`` runs the generation
    (it may wrap the same engine).
    """
    tok = engine.tokenizer
    eos = {engine.eos_token_id} if engine.eos_token_id is not None else set()
    eot = tok.token_to_id(END_OF_TURN)
    chat_stop_ids = frozenset(eos | ({eot} if eot is not None else set()))
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        if not scheduler.running:
            scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop, True, 60.0)

    app = FastAPI(title="bitnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        return JSONResponse(APIError(400, str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request, e: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").body(),
                            status_code=500)

    async def read_body(request: HTTPRequest) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"We could not parse the JSON body of your request ({e}).", code="invalid_json") \
                from None
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
        model = body.get("model")
        if model is not None and model != model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{model_name}'.",
                           param="model", code="model_not_found")
        return body

    def submit(req: Request, param: str) -> AsyncStream:
        try:
            return scheduler.submit_async(req)
        except PromptTooLong as e:
            raise APIError(400, f"Prompt too long: {e} (prompt and reply together).",
                           param=param, code="context_length_exceeded") from None
        except QueueFull as e:
            raise APIError(429, f"The server is busy ({e}); retry later.", type="rate_limit_error",
                           code="queue_full") from None
        except SchedulerStopped as e:
            raise APIError(503, f"The server is not taking requests ({e}).", type="server_error",
                           code="unavailable") from None
        except ValueError as e:
            raise APIError(400, str(e), param=param, code="invalid_value") from None

    def streaming(body: dict) -> tuple[bool, bool]:
        """(stream, stream_options.include_usage), checked before anything is queued."""
        return (_field(body, "stream", (bool,), False),
                bool(_field(body, "stream_options", (dict,), {}).get("include_usage")))

    async def run(request: HTTPRequest, stream: AsyncStream, chat: bool, sse: tuple[bool, bool]):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        obj = "chat.completion" if chat else "text_completion"
        now = int(time.time())
        if sse[0]:
            include_usage = sse[1]

            def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> dict:
                if chat:
                    delta = ({"role": "assistant", "content": ""} if role else
                             {} if piece is None else {"content": piece})
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
                return {"id": rid, "object": obj + ".chunk" if chat else obj, "created": now, "model": model_name,
                        "choices": [choice]}

            async def events() -> AsyncIterator[str]:
                try:
                    if chat:
                        yield _sse(chunk(None, role=True))
                    async for d in stream:
                        if d.finish_reason in ("cancelled", "error"):
                            yield _sse(_stream_error(d).body())
                            break
                        if d.text:
                            yield _sse(chunk(d.text))
                        if d.finish_reason is not None:
                            yield _sse(chunk(None, d.finish_reason))
                            if include_usage:
                                yield _sse({"id": rid, "object": obj + ".chunk" if chat else obj, "created": now,
                                            "model": model_name, "choices": [], "usage": _usage(d)})
                    yield _sse("[DONE]")
                finally:  # also when the client went away (Starlette cancels this generator)
                    stream.cancel()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def watch_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            stream.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        parts, last = [], None
        try:
            async for d in stream:
                parts.append(d.text)
                last = d
        finally:
            watcher.cancel()
            stream.cancel()
        if last.finish_reason in ("cancelled", "error"):
            raise _stream_error(last)
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": last.finish_reason} if chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason})
        return {"id": rid, "object": obj, "created": now, "model": model_name, "choices": [choice],
                "usage": _usage(last)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await read_body(request)
        msgs = _messages(body)
        gen, sse = _sampling(body), streaming(body)
        try:
            ids = tok.encode(engine.apply_chat_template(msgs), add_special_tokens=False).ids
        except Exception as e:  # jinja2's errors (a template that rejects this conversation)
            raise APIError(400, f"The chat template rejected the messages: {e}", param="messages",
                           code="invalid_value") from None
        req = Request(prompt_ids=ids, stop_token_ids=chat_stop_ids, **{**gen, "stop": [END_OF_TURN] + gen["stop"]})
        return await run(request, submit(req, "messages"), True, sse)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await read_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one prompt
        if isinstance(prompt, str):
            ids = tok.encode(prompt).ids
        elif (isinstance(prompt, list) and prompt
              and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            ids = list(prompt)
        elif prompt is None:
            raise APIError(400, "Missing required parameter: 'prompt'.", param="prompt",
                           code="missing_required_parameter")
        else:
            raise APIError(400, "Invalid 'prompt': expected a string or a non-empty array of token ids "
                                "(one prompt per request).", param="prompt", code="invalid_type")
        if _field(body, "echo", (bool,), False):
            raise APIError(400, "echo is not supported by this server.", param="echo", code="unsupported_value")
        gen, sse = _sampling(body), streaming(body)
        req = Request(prompt_ids=ids, stop_token_ids=frozenset(eos), **gen)
        return await run(request, submit(req, "prompt"), False, sse)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "bitnet"}]}

    @app.get("/health")
    async def health():
        st = scheduler.status()
        ok = scheduler.running and scheduler.error is None
        st["status"] = "ok" if ok else "unavailable"
        if scheduler.error:
            st["error"] = scheduler.error
        return JSONResponse(st, status_code=200 if ok else 503)

    return app


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitnet serve",
                                description="OpenAI-compatible HTTP server (chat and text completions, streaming) "
                                            "on the C++ engine, with continuous batching over --parallel slots.",
                                epilog="more: docs/serving.md in the bitnet source repository")
    p.add_argument("model_dir", type=Path, help="packed export directory (config.json, model.safetensors, "
                                                 "tokenizer.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--parallel", type=int, default=4, help="sequence slots: requests generating at once")
    p.add_argument("--ctx-size", type=int, default=None,
                   help=f"positions per slot, prompt + reply (default {DEFAULT_CTX}, at most the model's); "
                        "KV memory is bounded by parallel x ctx-size positions")
    p.add_argument("--threads", type=int, default=None, help="engine worker threads (default: all CPUs)")
    p.add_argument("--head", choices=["auto", "f16", "int8", "int4"], default="auto", help="output head precision")
    p.add_argument("--weights", choices=["auto", "i2", "t5"], default="auto",
                   help="ternary weight layout in memory (auto: the faster one on this CPU)")
    p.add_argument("--kv-cache", choices=["f32", "f16"], default="f16",
                   help="KV cache element type (default f16: half the KV memory per slot and faster decode at "
                        "long context; f32 is exact against the PyTorch reference)")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot (more: HTTP 429)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                   help="most prompt tokens read per step while other requests decode, so long prompts "
                        f"do not stall running streams (default {DEFAULT_PREFILL_CHUNK}; "
                        f"{PREFILL_ALONE} when none decodes)")
    p.add_argument("--model-name", default=None, help="the name clients use (default: the directory's name)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, seconds to let running streams finish before cancelling them")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    a = p.parse_args(argv)
    for flag, v, lo in (("--parallel", a.parallel, 1), ("--ctx-size", a.ctx_size, 1), ("--queue", a.queue, 0),
                        ("--prefill-chunk", a.prefill_chunk, 1), ("--port", a.port, 0)):
        if v is not None and v < lo:
            p.error(f"{flag} must be >= {lo}, got {v}")
    from .engine import Engine, check_threads

    check_threads(a.threads, "--threads")
    eng = Engine(a.model_dir, threads=a.threads, head=a.head, weights=a.weights, kv_cache=a.kv_cache)
    if eng.tokenizer is None:
        raise ValueError(f"{a.model_dir} has no tokenizer.json: bitnet serve needs one")
    ctx = a.ctx_size if a.ctx_size is not None else min(DEFAULT_CTX, eng.max_positions)
    sched = Scheduler(eng, parallel=a.parallel, ctx_size=ctx, max_queue=a.queue, prefill_chunk=a.prefill_chunk)
    name = a.model_name or eng.path.resolve().name
    app = create_app(eng, sched, name)
    import uvicorn

    print(f"bitnet serve: {name} ({a.parallel} slots x {ctx} positions, {eng.threads} threads, {eng.head} head, "
          f"{eng.weights} weights, {a.kv_cache} KV cache) "
          f"on http://{a.host}:{a.port}/v1", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                                           timeout_graceful_shutdown=a.shutdown_timeout))
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-sends the signal to the handler it
    # found: a no-op here, so that a graceful shutdown exits with status 0 instead of dying by signal.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped_by.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sched.stop(cancel=True, timeout=60.0)
    return 0 if server.started else 1
