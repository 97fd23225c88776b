"""The OpenAI request and response bodies of ``bitnet serve``, as pydantic models (after vLLM's protocol.py).

Requests are parsed from the raw body with ``model_validate_json`` (strict types: ``"1"`` is not a
number, ``true`` is not 1; ``NaN`` and ``Infinity`` are not numbers; JSON nested deeper than 200
levels is refused by the parser) and turned into one :class:`~bitnet.inference.sampling.SamplingParams`
by :meth:`GenerationRequest.sampling_params`. Fields this server does not know are kept in
``model_extra`` so the server can log them. Every failure becomes an :class:`APIError`, answered as
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .sampling import MAX_SEED, SamplingError, SamplingParams

__all__ = ["APIError", "ChatMessage", "ChatCompletionRequest", "CompletionRequest", "GenerationRequest",
           "StreamOptions", "Usage", "ChatCompletionResponse", "CompletionResponse", "ChatCompletionChunk",
           "CompletionChunk", "ModelList", "ErrorBody", "parse_request", "validation_error"]

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 16  # OpenAI allows 4; a few more cost nothing, thousands would cost every token


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return ErrorBody(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                         code=self.code)).model_dump()


# ---------------------------------------------------------------------- requests
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class GenerationRequest(_Body):
    """The fields both endpoints share. ``top_k``, ``repetition_penalty`` and ``ignore_eos`` are
    extensions (vLLM's names); ``top_k`` -1 or 0 = off."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    logprobs: bool | int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None

    def sampling_params(self, stop_token_ids: frozenset[int] = frozenset(), extra_stop: tuple[str, ...] = ()
                        ) -> SamplingParams:
        """The one :class:`SamplingParams` of this request (OpenAI's default temperature is 1)."""
        if self.n not in (None, 1):
            raise APIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by this server.", param="logprobs",
                           code="unsupported_value")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"At most {MAX_STOP_STRINGS} stop strings are supported, got {len(stops)}.",
                           param="stop", code="invalid_value")
        try:
            return SamplingParams(
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=self.top_p, top_k=None if self.top_k in (None, -1) else self.top_k,
                repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
                seed=self.seed, max_tokens=self.max_tokens if self.max_tokens is not None else self.max_completion_tokens,
                stop=tuple(extra_stop) + tuple(stops), stop_token_ids=stop_token_ids, ignore_eos=self.ignore_eos)
        except SamplingError as e:
            raise APIError(400, str(e), param=e.field, code="invalid_value") from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)

    def conversation(self) -> list[dict[str, str]]:
        """``[{"role", "content"}]`` for the chat template ("developer" is a system message)."""
        return [{"role": ROLES[m.role], "content": m.text()} for m in self.messages]


class CompletionRequest(GenerationRequest):
    prompt: str | list[Any]
    echo: bool = False

    def prompt_value(self) -> str | list[int]:
        """The one prompt: a string or a non-empty list of token ids (a batch of one is unwrapped)."""
        if self.echo:
            raise APIError(400, "echo is not supported by this server.", param="echo", code="unsupported_value")
        p = self.prompt
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]  # a batch of one prompt
        if isinstance(p, str):
            return p
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return p
        raise APIError(400, "Invalid 'prompt': expected a string or a non-empty array of token ids "
                            "(one prompt per request).", param="prompt", code="invalid_type")


# ---------------------------------------------------------------------- responses
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class _Reply(BaseModel):
    """What every response and chunk starts with."""

    id: str
    created: int
    model: str


class ChatCompletionResponse(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class CompletionResponse(_Reply):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(_Reply):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bitnet"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------- validation errors -> OpenAI's body
_TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict", "none")  # union-member names pydantic puts in loc


def _param(loc: tuple) -> str | None:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper():
            break  # "str", "list[TextPart]", "function-after[...]": which union member failed
        else:
            out += ("." if out else "") + part
    return out or None


def validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's (or FastAPI's) errors as an OpenAI-style 400."""
    e = errors[0]
    kind, loc = e.get("type", ""), tuple(x for x in e.get("loc", ()) if x != "body")
    param = _param(loc)
    value = e.get("input")
    if kind == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request ({e.get('msg')}).",
                        code="invalid_json")
    if not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
        return APIError(400, "The request body must be a JSON object.", code="invalid_json")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if kind == "too_short" and isinstance(value, list) and not value:
        return APIError(400, f"Invalid '{param}': empty array. Expected an array with minimum length 1.",
                        param=param, code="empty_array")
    number = "integer" if isinstance(value, int) else "decimal"
    codes = {"greater_than_equal": f"{number}_below_min_value", "greater_than": f"{number}_below_min_value",
             "less_than_equal": f"{number}_above_max_value", "less_than": f"{number}_above_max_value"}
    if kind in codes:
        return APIError(400, f"Invalid '{param}': {e.get('msg', '').lower()}, got {value!r}.", param=param,
                        code=codes[kind])
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "union_tag_invalid":
        shown = repr(value)[:50] if value is not None else "null"
        return APIError(400, f"Invalid type for '{param}': {e.get('msg', '').lower()}, got {shown}.",
                        param=param, code="invalid_type")
    return APIError(400, f"Invalid '{param}': {e.get('msg', 'invalid value').lower()}.", param=param,
                    code="invalid_value")


def parse_request(model: type[_Body], raw: bytes) -> _Body:
    """``model`` parsed and validated from the raw JSON body; raises :class:`APIError` (400)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None
