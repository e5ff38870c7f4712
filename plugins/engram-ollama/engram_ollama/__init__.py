"""engram provider for Ollama's HTTP API: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/tags``.

Streaming answers are Ollama's NDJSON lines (one JSON object per line, ``done: true`` last).
Locality is ``local`` when ``base_url`` points at a loopback address, ``remote`` otherwise
(an Ollama on another machine is data leaving this one), unless ``locality`` says otherwise.
Requests go through a proxy only when ``proxy`` names one (never from ``HTTP_PROXY`` and the
like), and a proxy makes the provider ``remote``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from engram.plugins import Completion, CostHint, ProviderHealth, http_client_options, locality_of
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    # httpx is imported, and the client made, at the first request: a daemon starts every
    # installed provider, and importing httpx and building a client (TLS context included) for
    # each took a tenth of a second or more of every start, for providers most starts never call.
    import httpx

__all__ = ["OllamaConfig", "OllamaError", "OllamaProvider"]
__version__ = "0.1.0"


class OllamaError(RuntimeError):
    """Ollama answered with an error status or an error object."""


class OllamaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default="http://127.0.0.1:11434", description="Where Ollama listens.")
    model: str = Field(default="llama3.2", description="Model for generate and chat when the call names none.")
    embed_model: str = Field(default="nomic-embed-text", description="Model for embed when the call names none.")
    timeout: float = Field(default=120.0, gt=0, description="Seconds for one HTTP exchange (engram adds its own call timeout).")
    keep_alive: str | None = Field(default=None, description="Ollama's keep_alive (e.g. '5m'): how long it keeps the model loaded.")
    locality: Literal["auto", "local", "remote"] = Field(
        default="auto", description="auto: local when base_url is loopback, remote otherwise."
    )
    proxy: str | None = Field(
        default=None,
        description="HTTP proxy to reach base_url through; makes the provider remote. "
        "HTTP_PROXY and the like are ignored.",
    )


class OllamaProvider:
    name = "ollama"
    capabilities = frozenset({"generate", "chat", "embed"})
    config_model = OllamaConfig
    version = __version__
    cost = CostHint()  # it runs on this machine: no price per token

    def __init__(self, config: OllamaConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.locality = locality_of(config.base_url, config.locality, config.proxy)
        self._transport = transport
        self._started = False
        self._client: httpx.AsyncClient | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # No request here: a stopped Ollama is a health problem, not a reason to refuse to load.
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if not self._started:
            raise OllamaError("provider not started")
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                base_url=self.config.base_url.rstrip("/"),
                timeout=self.config.timeout,
                transport=self._transport,
                **http_client_options(self.config.proxy),
            )
        return self._client

    async def health(self) -> ProviderHealth:
        import httpx

        try:
            models = await self.list_models()
        except (httpx.HTTPError, OllamaError) as exc:
            return ProviderHealth(ok=False, detail=f"{self.config.base_url}: {type(exc).__name__}: {exc}")
        return ProviderHealth(ok=True, detail=f"{len(models)} models at {self.config.base_url}")

    # --- API -----------------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        data = await self._post_or_get("GET", "/api/tags", None)
        return [str(m["name"]) for m in data.get("models", [])]

    def _body(self, model: str | None, options: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model or self.config.model, **extra}
        if options:
            body["options"] = options
        if self.config.keep_alive is not None:
            body["keep_alive"] = self.config.keep_alive
        return body

    async def generate(
        self, prompt: str, *, model: str | None = None, system: str | None = None, options: dict[str, Any] | None = None
    ) -> Completion:
        body = self._body(model, options, prompt=prompt, stream=False, **({"system": system} if system else {}))
        data = await self._post_or_get("POST", "/api/generate", body)
        return Completion(
            text=data["response"], model=data.get("model"),
            input_tokens=data.get("prompt_eval_count"), output_tokens=data.get("eval_count"),
        )

    async def stream_generate(
        self, prompt: str, *, model: str | None = None, system: str | None = None, options: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        body = self._body(model, options, prompt=prompt, stream=True, **({"system": system} if system else {}))
        async for line in self._lines("/api/generate", body):
            if line.get("response"):
                yield line["response"]

    async def chat(
        self, messages: list[dict[str, str]], *, model: str | None = None, options: dict[str, Any] | None = None
    ) -> Completion:
        data = await self._post_or_get("POST", "/api/chat", self._body(model, options, messages=messages, stream=False))
        return Completion(
            text=data["message"]["content"], model=data.get("model"),
            input_tokens=data.get("prompt_eval_count"), output_tokens=data.get("eval_count"),
        )

    async def stream_chat(
        self, messages: list[dict[str, str]], *, model: str | None = None, options: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        async for line in self._lines("/api/chat", self._body(model, options, messages=messages, stream=True)):
            content = (line.get("message") or {}).get("content")
            if content:
                yield content

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        body: dict[str, Any] = {"model": model or self.config.embed_model, "input": list(texts)}
        data = await self._post_or_get("POST", "/api/embed", body)
        vectors = data["embeddings"]
        if len(vectors) != len(texts):
            raise OllamaError(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        return [[float(x) for x in v] for v in vectors]

    # --- HTTP ----------------------------------------------------------------------------------

    async def _post_or_get(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        data = _json(response.content)
        _raise_for(response.status_code, data)
        return data

    async def _lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self.client.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                _raise_for(response.status_code, _json(await response.aread()))
            async for raw in response.aiter_lines():
                if not raw.strip():
                    continue
                line = _json(raw.encode())
                if "error" in line:
                    raise OllamaError(str(line["error"]))
                yield line
                if line.get("done"):
                    return


def _json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise OllamaError(f"not JSON: {content[:80]!r}") from exc
    if not isinstance(data, dict):
        raise OllamaError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _raise_for(status: int, data: dict[str, Any]) -> None:
    if status >= 400:
        raise OllamaError(f"HTTP {status}: {data.get('error', data)}")
