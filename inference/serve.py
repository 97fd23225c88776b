"""``bitnet serve``: an OpenAI-compatible HTTP server on the C++ engine, with continuous batching.

    bitnet serve out/export --port 8000 --parallel 8 --ctx-size 2048 --threads 2 --api-key-file keys.txt

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent
events in OpenAI's chunk format, ending with ``data: [DONE]``, or whole), ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus). Chat prompts use the export's chat template.

A request's path:
1. :class:`Guard` (an ASGI middleware, on the event loop, moving bytes only): the API key of
   ``/v1/*`` routes (401), then the body, refused with 413 from its ``Content-Length`` or as soon
   as more than ``--max-body`` bytes have streamed in, before the rest is read;
2. a worker thread (:meth:`OpenAIServer.prepare`): the JSON parsed into the pydantic models of
   :mod:`~bitnet.inference.protocol` (OpenAI's error body on any failure, nesting bounded by the
   parser), the prompt's length capped in characters before tokenizing, the chat template,
   tokenizing, one :class:`SamplingParams`;
3. the :class:`~bitnet.inference.scheduler.Scheduler`'s engine thread generates; the event loop
   forwards its deltas (:meth:`OpenAIServer.stream_events` / :meth:`OpenAIServer.whole`);
4. one access-log line per request (id, status, tokens in/out, TTFT, total time).

Request fields: ``model`` (optional; when given it must be the served name), ``messages`` /
``prompt`` (a string or a list of token ids), ``max_tokens`` (or ``max_completion_tokens``;
default: until the slot's context is full), ``temperature`` (default 1, 0 = greedy), ``top_p``,
``seed``, ``stop``, ``stream``, ``stream_options.include_usage``; extensions ``top_k``,
``repetition_penalty`` and ``ignore_eos`` (generate exactly ``max_tokens``, for benchmarks).
Unknown fields are logged and ignored. Errors are 4xx with OpenAI's body
``{"error": {"message", "type", "param", "code"}}``; a full queue is 429.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .protocol import (APIError, AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                       ChatCompletionRequest, ChatCompletionResponse, CompletionChoice, CompletionChunk,
                       CompletionRequest, CompletionResponse, DeltaMessage, GenerationRequest, ModelCard, ModelList,
                       PromptTokensDetails, Usage, parse_request, validation_error)
from .scheduler import (ARRIVAL_GAP, DEFAULT_BATCH_WINDOW, DEFAULT_PREFILL_CHUNK, PREFILL_ALONE, AsyncStream, Delta,
                        PromptTooLong, QueueFull, Request, Scheduler, SchedulerObserver, SchedulerStopped)

__all__ = ["create_app", "main", "APIError", "ServeConfig", "serve_limits"]

log = logging.getLogger("bitnet.serve")
access_log = logging.getLogger("bitnet.serve.access")

MAX_PORT = 65535
DEFAULT_CTX = 2048  # --ctx-size default (capped at the model's max_position_embeddings)
DEFAULT_STALL_TIMEOUT = 30.0  # --stall-timeout: seconds a stream may go unread before it loses its slot
# A prompt's characters are capped at ctx_size x (the longest token's characters) x this margin before
# tokenizing: no token covers more characters than its own string has, so a longer text cannot fit;
# the margin covers normalizers that shrink text (NFC composition).
CHARS_MARGIN = 2
JSON_BYTES_PER_CHAR = 6  # the most a character takes in a JSON string (\uXXXX)
MIN_MAX_BODY = 1 << 20  # --max-body is never below 1 MiB (token-id prompts, long stop lists)


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits and policies (the CLI's flags; defaults from :func:`serve_limits`)."""

    model_name: str
    max_body: int  # bytes of a request body (413 beyond)
    max_prompt_chars: int  # characters of a prompt / all messages together (400 beyond, before tokenizing)
    api_keys: tuple[str, ...] = ()  # empty: no key required
    request_timeout: float | None = None  # seconds a request may run (queue + generation)
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT  # seconds a stream may go unread
    log_format: str = "plain"  # access log: "plain" or "json"
    prepare_threads: int = 2  # worker threads that parse, template and tokenize
    body_budget: int | None = None  # bytes of all bodies held at once (None: 16 x max_body, at least 64 MiB)


def serve_limits(ctx_size: int, tokenizer: Any) -> tuple[int, int]:
    """(max_prompt_chars, max_body) for a context of ``ctx_size`` tokens with this tokenizer."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    chars = ctx_size * max(longest, 1) * CHARS_MARGIN
    return chars, max(MIN_MAX_BODY, chars * JSON_BYTES_PER_CHAR + (64 << 10))


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _access_line(fmt: str, rec: dict) -> None:
    """One access-log line: ``key=value`` pairs (None left out) or one JSON object."""
    if fmt == "json":
        access_log.info(json.dumps(rec, separators=(",", ":")))
    else:
        access_log.info(" ".join(f"{k}={v}" for k, v in rec.items() if v is not None))


# ---------------------------------------------------------------------- the guard: keys and body size
class Guard:
    """ASGI middleware: API keys on ``/v1/*`` (401) and the body limit (413), before the app reads
    anything; counts every HTTP answer for ``/metrics``. Only moves bytes."""

    OPEN_PATHS = ("/health", "/metrics")

    def __init__(self, app: Callable, config: ServeConfig, metrics: ServeMetrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self.keys = [k.encode() for k in config.api_keys]
        # Bodies are held in memory from their first byte until their request ends; many slow or
        # concurrent large bodies could add up, so their total is bounded too (429 beyond).
        self.budget = config.body_budget if config.body_budget is not None else max(16 * config.max_body, 64 << 20)
        self.held = 0

    def _authorized(self, headers: dict[bytes, bytes]) -> APIError | None:
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth:
            return APIError(401, "You didn't provide an API key. Send it in the Authorization header as "
                                 "'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        ok = scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), k) for k in self.keys)
        if not ok:  # the key is never echoed or logged
            return APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/chat/completions", "/v1/completions", "/v1/models", *self.OPEN_PATHS) \
            else "other"

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)

        async def refuse(e: APIError) -> None:  # answered here: the app (and its access line) never sees it
            _access_line(self.config.log_format, {"id": "req-" + uuid.uuid4().hex, "endpoint": path,
                                                  "status": e.status, "error": e.code})
            await _error_response(e)(scope, receive, counted_send)

        headers = dict(scope.get("headers") or [])
        if self.keys and path not in self.OPEN_PATHS:
            refused = self._authorized(headers)
            if refused is not None:
                return await refuse(refused)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, counted_send)
        limit = self.config.max_body
        too_big = APIError(413, f"The request body is larger than this server's limit of {limit} bytes "
                                "(--max-body).", code="request_too_large", headers={"Connection": "close"})
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await refuse(APIError(400, "Invalid Content-Length header.", code="invalid_request"))
        if declared > limit:
            return await refuse(too_big)
        chunks, size = [], 0
        try:
            while True:  # read the body here (bounded), then hand it to the app in one piece
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                size += len(body)
                self.held += len(body)
                if size > limit:
                    return await refuse(too_big)
                if self.held > self.budget:
                    return await refuse(APIError(429, "The server holds too many request bodies at once; retry "
                                                      "later.", type="rate_limit_error", code="too_many_bodies",
                                                 headers={"Connection": "close"}))
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()  # then http.disconnect when the client goes

            await self.app(scope, replay, counted_send)
        finally:
            self.held -= size


# ---------------------------------------------------------------------- the OpenAI front
@dataclass
class Prepared:
    """A parsed and tokenized request, ready to submit."""

    body: GenerationRequest
    request: Request
    param: str  # "messages" or "prompt": the field errors about the prompt name


class OpenAIServer:
    """Turns HTTP bodies into scheduler :class:`Request`\\ s and deltas into OpenAI bodies."""

    def __init__(self, engine, scheduler: Scheduler, config: ServeConfig, metrics: ServeMetrics) -> None:
        self.engine, self.scheduler, self.config, self.metrics = engine, scheduler, config, metrics
        self.created = int(time.time())
        self.pool = ThreadPoolExecutor(config.prepare_threads, thread_name_prefix="bitnet-prepare")

    # -------------------------------------------------------------- worker thread
    def _check_body(self, body: GenerationRequest, rid: str) -> None:
        if body.model is not None and body.model != self.config.model_name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves "
                                f"'{self.config.model_name}'.", param="model", code="model_not_found")
        unknown = sorted(body.model_extra or {})
        if unknown:
            log.warning("request %s: ignored unknown fields %s", rid, ", ".join(f"'{k[:64]}'" for k in unknown[:20]))

    def _check_chars(self, n: int, param: str) -> None:
        if n > self.config.max_prompt_chars:
            raise APIError(400, f"Prompt too long: {n} characters; at most {self.config.max_prompt_chars} can fit in "
                                f"a request's context of {self.scheduler.ctx_size} tokens.", param=param,
                           code="context_length_exceeded")

    def prepare(self, raw: bytes, chat: bool, rid: str) -> Prepared:
        """Parse, check, template and tokenize one body (runs on a worker thread). Raises APIError."""
        if chat:
            body = parse_request(ChatCompletionRequest, raw)
            self._check_body(body, rid)
            msgs = body.conversation()
            self._check_chars(sum(len(m["content"]) for m in msgs), "messages")
            params = self.engine.with_stops(body.sampling_params(), chat=True)
            try:
                ids = self.engine.chat_ids(msgs)
            except Exception as e:  # jinja2's errors (a template that rejects this conversation)
                raise APIError(400, f"The chat template rejected the messages: {e}", param="messages",
                               code="invalid_value") from None
            param = "messages"
        else:
            body = parse_request(CompletionRequest, raw)
            self._check_body(body, rid)
            prompt = body.prompt_value()
            params = self.engine.with_stops(body.sampling_params())
            if isinstance(prompt, str):
                self._check_chars(len(prompt), "prompt")
                ids = self.engine.encode(prompt)
            else:
                ids = prompt
            param = "prompt"
        return Prepared(body, Request(ids, params, id=rid, timeout=self.config.request_timeout), param)

    # -------------------------------------------------------------- event loop
    def submit(self, p: Prepared) -> AsyncStream:
        try:
            return self.scheduler.submit_async(p.request, stall_timeout=self.config.stall_timeout)
        except PromptTooLong as e:
            raise APIError(400, f"Prompt too long: {e} (prompt and reply together).",
                           param=p.param, code="context_length_exceeded") from None
        except QueueFull as e:
            raise APIError(429, f"The server is busy ({e}); retry later.", type="rate_limit_error",
                           code="queue_full") from None
        except SchedulerStopped as e:
            raise APIError(503, f"The server is not taking requests ({e}).", type="server_error",
                           code="unavailable") from None
        except ValueError as e:
            raise APIError(400, str(e), param=p.param, code="invalid_value") from None

    async def handle(self, http: HTTPRequest, chat: bool) -> Response:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        t0 = time.monotonic()
        try:
            with self.scheduler.arriving():  # an idle engine waits for it (a burst decodes together)
                raw = await http.body()  # already read and bounded by the Guard
                prepared = await asyncio.get_running_loop().run_in_executor(self.pool, self.prepare, raw, chat, rid)
                stream = self.submit(prepared)
        except APIError as e:
            self.access(rid, http, e.status, t0, error=e.code)
            raise
        if prepared.body.stream:
            return StreamingResponse(self.stream_events(stream, prepared, chat, http, t0), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            out = await self.whole(stream, prepared, chat, http)
        except APIError as e:
            self.access(rid, http, e.status, t0, stream.request, error=e.code)
            raise
        self.access(rid, http, 200, t0, stream.request)
        return JSONResponse(out.model_dump())

    def _usage(self, d: Delta) -> Usage:
        return Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens,
                     total_tokens=d.prompt_tokens + d.completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=d.cached_tokens))

    @staticmethod
    def _stream_error(d: Delta) -> APIError:
        if d.finish_reason == "timeout":
            return APIError(504, d.error or "the request timed out", type="server_error", code="request_timeout")
        if d.finish_reason == "error":
            return APIError(503, d.error or "the engine failed", type="server_error", code="engine_error")
        return APIError(503, f"The request was cancelled ({d.error or 'the server is shutting down'}).",
                        type="server_error", code="cancelled")

    async def stream_events(self, stream: AsyncStream, p: Prepared, chat: bool, http: HTTPRequest,
                            t0: float) -> AsyncIterator[str]:
        req, name, now = stream.request, self.config.model_name, int(time.time())
        status = 200

        def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> str:
            if chat:
                delta = DeltaMessage(role="assistant", content="") if role else DeltaMessage(content=piece)
                c = ChatCompletionChunk(id=req.id, created=now, model=name,
                                        choices=[ChatChunkChoice(delta=delta, finish_reason=finish)])
            else:
                c = CompletionChunk(id=req.id, created=now, model=name,
                                    choices=[CompletionChoice(text=piece or "", finish_reason=finish)])
            return _sse(c.model_dump_json())

        try:
            if chat:
                yield chunk(None, role=True)
            async for d in stream:
                if d.finish_reason in ("cancelled", "error", "timeout"):
                    err = self._stream_error(d)
                    status = err.status
                    yield _sse(json.dumps(err.body()))
                    break
                if d.text:
                    yield chunk(d.text)
                if d.finish_reason is not None:
                    yield chunk(None, d.finish_reason)
                    if p.body.include_usage:
                        cls = ChatCompletionChunk if chat else CompletionChunk
                        yield _sse(cls(id=req.id, created=now, model=name, choices=[],
                                       usage=self._usage(d)).model_dump_json())
            yield _sse("[DONE]")
        finally:  # also when the client went away (Starlette cancels this generator)
            gone = not req.status.finished
            stream.cancel("the client went away")
            self.access(req.id, http, status, t0, req, error="client_disconnected" if gone else None)

    async def whole(self, stream: AsyncStream, p: Prepared, chat: bool, http: HTTPRequest
                    ) -> ChatCompletionResponse | CompletionResponse:
        async def watch_disconnect() -> None:
            while (await http.receive())["type"] != "http.disconnect":
                pass
            stream.cancel("the client went away")

        watcher = asyncio.create_task(watch_disconnect())
        parts, last = [], None
        try:
            async for d in stream:
                parts.append(d.text)
                last = d
        finally:
            watcher.cancel()
            stream.cancel()
        if last.finish_reason in ("cancelled", "error", "timeout"):
            raise self._stream_error(last)
        text, req, name = "".join(parts), stream.request, self.config.model_name
        if chat:
            return ChatCompletionResponse(id=req.id, created=int(time.time()), model=name, usage=self._usage(last),
                                          choices=[ChatChoice(message=AssistantMessage(content=text),
                                                              finish_reason=last.finish_reason)])
        return CompletionResponse(id=req.id, created=int(time.time()), model=name, usage=self._usage(last),
                                  choices=[CompletionChoice(text=text, finish_reason=last.finish_reason)])

    def access(self, rid: str, http: HTTPRequest, status: int, t0: float, req: Request | None = None,
               error: str | None = None) -> None:
        """One access-log line per request: id, status, tokens in/out, TTFT, total time."""
        ttft = (req.first_token_time - req.arrival_time) if req is not None and req.first_token_time else None
        rec = {"id": rid, "endpoint": http.url.path, "status": status,
               "prompt_tokens": len(req.prompt_ids) if req is not None else 0,
               "completion_tokens": req.completion_tokens if req is not None else 0,
               "ttft_ms": round(ttft * 1e3, 1) if ttft is not None else None,
               "total_ms": round((time.monotonic() - t0) * 1e3, 1),
               "finish_reason": req.status.value if req is not None and req.status.finished else None,
               "error": error}
        _access_line(self.config.log_format, rec)


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(APIError(e.status_code, str(e.detail), code=code,
                                        headers=getattr(e, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        return _error_response(validation_error(list(e.errors())))

    @app.exception_handler(Exception)
    async def _internal_error(request, e: Exception):
        log.error("internal error on %s", request.url.path, exc_info=e)
        return _error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))


def _add_routes(app: FastAPI, server: OpenAIServer, scheduler: Scheduler, metrics: ServeMetrics) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await server.handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await server.handle(request, chat=False)

    @app.get("/v1/models")
    async def models():
        return ModelList(data=[ModelCard(id=server.config.model_name, created=server.created)]).model_dump()

    @app.get("/health")
    async def health():
        st = scheduler.status()
        ok = scheduler.running and scheduler.error is None
        st["status"] = "ok" if ok else "unavailable"
        if scheduler.error:
            st["error"] = scheduler.error
        return JSONResponse(st, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(engine, scheduler: Scheduler, model_name: str | None = None, *, config: ServeConfig | None = None,
               metrics: ServeMetrics | None = None) -> Callable[..., Awaitable[None]]:
    """The ASGI app serving ``engine`` through ``scheduler`` (started and stopped by the app's lifespan):
    the FastAPI app (``.fastapi``) inside its :class:`Guard`.

    ``engine`` tokenizes, renders chat templates and says which tokens end a reply; ``scheduler``
    generates (it may wrap the same engine). ``config`` defaults to :func:`serve_limits` for the
    scheduler's context and no API key. If ``metrics`` is given it must be the scheduler's observer.
    """
    if config is None:
        chars, body = serve_limits(scheduler.ctx_size, engine.tokenizer)
        config = ServeConfig(model_name=model_name or "model", max_body=body, max_prompt_chars=chars)
    if metrics is None:
        metrics = scheduler.observer if isinstance(scheduler.observer, ServeMetrics) else ServeMetrics(
            config.model_name)
    if type(scheduler.observer) is SchedulerObserver:  # the scheduler's default, which records nothing
        scheduler.observer = metrics
    metrics.watch(scheduler)
    server = OpenAIServer(engine, scheduler, config, metrics)

    @asynccontextmanager
    async def lifespan(app):
        if not scheduler.running:
            scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop, True, 60.0)
        server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="bitnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.server = scheduler, server
    _add_error_handlers(app)
    _add_routes(app, server, scheduler, metrics)
    guard = Guard(app, config, metrics)  # outermost: nothing reaches the app before the guard passes it
    guard.fastapi = app
    return guard


# ---------------------------------------------------------------------- command line
def _api_keys(flags: list[str], key_file: Path | None) -> tuple[str, ...]:
    keys = [k for k in flags if k]
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"--api-key-file {key_file}: {e.strerror}") from None
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not from_file:  # serving without the keys the operator meant to require would open the server
            raise ValueError(f"--api-key-file {key_file}: holds no API keys (one per line; # starts a comment)")
        keys += from_file
    env = os.environ.get("BITNET_API_KEY", "")
    keys += [k.strip() for k in env.split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def _listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn (which listens on it), made before the model
    loads, so that a port in use is one line naming it, at once, not uvicorn's log after the load.

    Raises:
        ValueError: the address cannot be bound (in use, not this machine's, a bad host name).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({reason})") from None
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == access_log.name and msg.startswith("{"):
            return msg
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": msg}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("bitnet.serve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitnet serve",
                                description="OpenAI-compatible HTTP server (chat and text completions, streaming) "
                                            "on the C++ engine, with continuous batching over --parallel slots.",
                                epilog="more: docs/serving.md in the bitnet source repository")
    p.add_argument("model_dir", type=Path, help="packed export directory (config.json, model.safetensors, "
                                                 "tokenizer.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 0-65535 (default 8000; 0: any free port)")
    p.add_argument("--parallel", type=int, default=4,
                   help="sequence slots: requests generating at once (default 4)")
    p.add_argument("--ctx-size", type=int, default=None,
                   help=f"positions per slot, prompt + reply (default {DEFAULT_CTX}, at most the model's); "
                        "KV memory is bounded by parallel x ctx-size positions")
    p.add_argument("--threads", type=int, default=None, help="engine worker threads (default: all CPUs)")
    p.add_argument("--head", choices=["auto", "f16", "int8", "int4"], default="auto",
                   help="output head precision (default: auto, which is int8)")
    p.add_argument("--weights", choices=["auto", "i2", "t5"], default="auto",
                   help="ternary weight layout in memory (default auto: the faster one on this CPU)")
    p.add_argument("--kv-cache", choices=["f32", "f16"], default="f16",
                   help="KV cache element type (default f16: half the KV memory per slot and faster decode at "
                        "long context; f32 is exact against the PyTorch reference)")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot (more: HTTP 429; default 64)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                   help="most prompt tokens read per step while other requests decode, so long prompts "
                        f"do not stall running streams (default {DEFAULT_PREFILL_CHUNK}; "
                        f"{PREFILL_ALONE} when none decodes)")
    p.add_argument("--batch-window", type=float, default=DEFAULT_BATCH_WINDOW, metavar="SECONDS",
                   help="an idle server that gets a request waits up to this long for more (while requests are "
                        f"being parsed, else until {ARRIVAL_GAP * 1e3:g} ms bring none, never past every slot "
                        "taken), so a burst of requests reads its prompts in one step and decodes together "
                        f"(default {DEFAULT_BATCH_WINDOW:g}; 0 = no wait)")
    p.add_argument("--model-name", default=None, help="the name clients use (default: the directory's name)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (repeatable; also --api-key-file and the "
                        "BITNET_API_KEY environment variable, comma-separated); /health and /metrics stay open")
    p.add_argument("--api-key-file", type=Path, default=None, help="a file of API keys, one per line (# comments)")
    p.add_argument("--max-body", type=int, default=None,
                   help="most bytes in a request body, refused with 413 before the rest is read (default: "
                        "sized from --ctx-size: what the longest prompt that can fit takes as JSON, at least 1 MiB)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds a request may take, queue and generation together (default: no limit)")
    p.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT,
                   help="seconds a streaming client may leave its stream unread before its request is cancelled "
                        f"and its slot freed (default {DEFAULT_STALL_TIMEOUT:g})")
    p.add_argument("--log-format", choices=["plain", "json"], default="plain",
                   help="server and access log lines as text or one JSON object per line (default plain)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, seconds to let running streams finish before cancelling them (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="least severe log lines shown (default info)")
    a = p.parse_args(argv)
    for flag, v, lo in (("--parallel", a.parallel, 1), ("--ctx-size", a.ctx_size, 1), ("--queue", a.queue, 0),
                        ("--prefill-chunk", a.prefill_chunk, 1), ("--port", a.port, 0), ("--max-body", a.max_body, 1)):
        if v is not None and v < lo:
            p.error(f"{flag} must be >= {lo}, got {v}")
    for flag, v in (("--request-timeout", a.request_timeout), ("--stall-timeout", a.stall_timeout)):
        if v is not None and not v > 0:
            p.error(f"{flag} must be > 0 seconds, got {v}")
    if not 0 <= a.batch_window < float("inf"):
        p.error(f"--batch-window must be >= 0 seconds, got {a.batch_window}")
    if not 0 <= a.shutdown_timeout < float("inf"):
        p.error(f"--shutdown-timeout must be >= 0 seconds, got {a.shutdown_timeout}")
    if a.port > MAX_PORT:
        p.error(f"--port must be <= {MAX_PORT}, got {a.port}")
    keys = _api_keys(a.api_key, a.api_key_file)
    _setup_logging(a.log_level, a.log_format)
    sock = _listen_socket(a.host, a.port)
    try:
        return _serve(a, keys, sock)
    finally:
        sock.close()


def _serve(a: argparse.Namespace, keys: tuple[str, ...], sock: socket.socket) -> int:
    """Load the model and run the server on the bound socket until SIGTERM / SIGINT."""
    from .engine import Engine, check_threads

    check_threads(a.threads, "--threads")
    eng = Engine(a.model_dir, threads=a.threads, head=a.head, weights=a.weights, kv_cache=a.kv_cache)
    for line in eng.load_log:
        log.info("load: %s", line)
    if eng.tokenizer is None:
        raise ValueError(f"{a.model_dir} has no tokenizer.json: bitnet serve needs one")
    ctx = a.ctx_size if a.ctx_size is not None else min(DEFAULT_CTX, eng.max_positions)
    name = a.model_name or eng.path.resolve().name
    chars, body = serve_limits(ctx, eng.tokenizer)
    config = ServeConfig(model_name=name, max_body=a.max_body or body, max_prompt_chars=chars, api_keys=keys,
                         request_timeout=a.request_timeout, stall_timeout=a.stall_timeout, log_format=a.log_format)
    metrics = ServeMetrics(name)
    sched = Scheduler(eng, parallel=a.parallel, ctx_size=ctx, max_queue=a.queue, prefill_chunk=a.prefill_chunk,
                      batch_window=a.batch_window, observer=metrics)
    app = create_app(eng, sched, config=config, metrics=metrics)
    import uvicorn

    print(f"bitnet serve: {name} ({a.parallel} slots x {ctx} positions, {eng.threads} threads, {eng.head} head, "
          f"{eng.weights} weights, {a.kv_cache} KV cache, bodies up to {config.max_body} bytes, "
          f"{len(keys)} API key{'s' if len(keys) != 1 else ''}) on http://{a.host}:{sock.getsockname()[1]}/v1",
          flush=True)
    if not keys and not _loopback(a.host):
        log.warning("serving on %s without an API key: anyone who reaches the port can use it "
                    "(--api-key / --api-key-file / BITNET_API_KEY)", a.host)
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                                           timeout_graceful_shutdown=a.shutdown_timeout))
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-sends the signal to the handler it
    # found: a no-op here, so that a graceful shutdown exits with status 0 instead of dying by signal.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped_by.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sched.stop(cancel=True, timeout=60.0)
    return 0 if server.started else 1
