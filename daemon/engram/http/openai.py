"""The OpenAI-compatible shapes: request bodies as engram reads them, and the answers built from
engram's results (https://platform.openai.com/docs/api-reference: embeddings, chat completions,
models). Only translation lives here; the requests run as engram methods through the chain.

Model ids of chat completions say where the answer comes from:

- ``engram``: the providers' chat chain (``infer.chat``);
- ``provider:NAME`` or ``provider:NAME/MODEL``: that provider only (and that model at it);
- ``route:NAME``: a generate route of ``router.routes``, through ``route.ask``.

The ``engram`` member of a chat request (an extension) asks for memories as context:
``{"memory": {"k": 5, "namespace": "notes"}}`` answers through ``route.ask`` (recall, then the
route or the generate chain) with the last user message as the question.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engram.errors import InvalidParams, RPCError

__all__ = [
    "ChatCompletionBody",
    "EmbeddingsBody",
    "chat_call",
    "chat_chunk",
    "chat_completion",
    "embeddings_answer",
    "openai_error",
]

CHAIN_MODEL = "engram"
PROVIDER_PREFIX = "provider:"
ROUTE_PREFIX = "route:"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsBody(_Body):
    input: Annotated[str, Field(max_length=1_000_000)] | list[Annotated[str, Field(max_length=1_000_000)]] = Field(
        description="A text or a list of texts (token arrays are not accepted: engram tokenizes itself)."
    )
    model: str = Field(min_length=1, max_length=256, description="An engram embedding model, or engram for the default.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="Must be the model's own dimension if given.")
    user: str | None = Field(default=None, max_length=256)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class MemoryContext(_Body):
    k: int | None = Field(default=None, ge=0, description="Episodes recalled as context (default router.ask.k).")
    namespace: str | None = Field(default=None, max_length=256, description="Memory namespace (default: the caller's own).")
    session: str | None = Field(default=None, max_length=256, description="Working-memory session used as context.")
    remember: bool | None = Field(default=None, description="Remember the exchange (default router.ask.remember).")


class EngramExtension(_Body):
    memory: MemoryContext | None = None
    tags: list[str] = Field(default_factory=list, max_length=64, description="Data tags, for policy conditions.")


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionBody(_Body):
    model: str = Field(min_length=1, max_length=300)
    messages: list[Message] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = Field(default=1, description="One answer per request.")
    user: str | None = Field(default=None, max_length=256)
    engram: EngramExtension | None = None


# Options passed through to the provider, under the names Ollama and OpenAI both read.
_OPTIONS = ("temperature", "top_p", "stop", "seed")


def chat_call(body: ChatCompletionBody, stream_id: str) -> tuple[str, dict[str, Any]]:
    """The engram method and params that answer ``body``."""
    extension = body.engram or EngramExtension()
    if body.model.startswith(ROUTE_PREFIX) or extension.memory is not None:
        question = next((m.text() for m in reversed(body.messages) if m.role == "user"), None)
        if not question:
            raise InvalidParams("messages: route.ask needs a user message to answer", field="messages")
        if extension.tags:
            raise InvalidParams("engram.tags: route.ask (memory as context, route:NAME) takes no data tags",
                                field="engram.tags")
        params: dict[str, Any] = {"question": question, "stream": body.stream, "stream_id": stream_id}
        if body.model.startswith(ROUTE_PREFIX):
            params["route"] = body.model.removeprefix(ROUTE_PREFIX)
        elif body.model != CHAIN_MODEL:
            raise InvalidParams(
                f"model: with engram.memory, model is {CHAIN_MODEL!r} or route:NAME, not {body.model!r}", field="model"
            )
        memory = extension.memory or MemoryContext()
        params.update({key: value for key, value in memory.model_dump().items() if value is not None})
        return "route.ask", params
    params = {
        "messages": [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages],
        "stream": body.stream,
        "stream_id": stream_id,
        "tags": extension.tags,
    }
    if body.model.startswith(PROVIDER_PREFIX):
        provider, _, model = body.model.removeprefix(PROVIDER_PREFIX).partition("/")
        params["provider"] = provider
        if model:
            params["model"] = model
    elif body.model != CHAIN_MODEL:
        raise model_not_found(body.model)
    options = {key: getattr(body, key) for key in _OPTIONS if getattr(body, key) is not None}
    if (limit := body.max_completion_tokens or body.max_tokens) is not None:
        options["max_tokens"] = limit
    if options:
        params["options"] = options
    return "infer.chat", params


def model_not_found(model: str) -> InvalidParams:
    return InvalidParams(
        f"model: {model!r} is not a chat model here; use {CHAIN_MODEL!r}, provider:NAME[/MODEL] or route:NAME "
        "(GET /v1/models lists them)",
        field="model",
        reason="model_not_found",
    )


def answer_of(method: str, result: dict[str, Any]) -> tuple[str, str | None]:
    """The answer text and the provider of an infer.chat or route.ask result."""
    if method == "route.ask":
        return result["answer"], result.get("provider")
    return result["text"], result.get("provider")


def chat_completion(completion_id: str, model: str, method: str, result: dict[str, Any], created: int) -> dict[str, Any]:
    text, provider = answer_of(method, result)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "engram": {"method": method, "provider": provider, "audit_seq": result.get("audit_seq")},
    }


def chat_chunk(completion_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def embeddings_answer(result: dict[str, Any], encoding: str) -> dict[str, Any]:
    """OpenAI's embeddings list from an infer.embed result asked in b64 (float32 little-endian)."""
    vectors = result["vectors"]
    rows = np.frombuffer(base64.b64decode(vectors["b64"]), dtype="<f4").reshape(vectors["shape"])
    if encoding == "base64":
        data = [base64.b64encode(row.tobytes()).decode() for row in rows]
    else:
        data = rows.tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(data)],
        "model": result["model"],
        "usage": {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]},
    }


# The HTTP status and OpenAI error type of each JSON-RPC error code.
STATUS_OF_CODE: dict[int, tuple[int, str]] = {
    -32700: (400, "invalid_request_error"),
    -32600: (400, "invalid_request_error"),
    -32601: (404, "not_found_error"),
    -32602: (400, "invalid_request_error"),
    -32001: (403, "permission_error"),
    -32002: (404, "not_found_error"),
    -32003: (429, "rate_limit_error"),
    -32004: (504, "timeout_error"),
    -32005: (503, "service_unavailable_error"),
    -32006: (500, "api_error"),
    -32007: (409, "conflict_error"),
}


def status_of(error: RPCError) -> int:
    return STATUS_OF_CODE.get(error.code, (500, "api_error"))[0]


def openai_error(error: RPCError) -> dict[str, Any]:
    data = error.to_wire().get("data") or {}
    return {
        "error": {
            "message": error.message,
            "type": STATUS_OF_CODE.get(error.code, (500, "api_error"))[1],
            "code": data.get("reason"),
            "param": data.get("field"),
            "engram": error.to_wire(),
        }
    }


def now() -> int:
    return int(time.time())
