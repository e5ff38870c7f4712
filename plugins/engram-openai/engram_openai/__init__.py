"""engram provider for OpenAI-compatible endpoints: ``/chat/completions`` (+ SSE), ``/embeddings``.

``base_url`` includes the version prefix (``https://api.openai.com/v1``). Locality is ``remote``
unless ``base_url`` is a loopback address (a llama.cpp or vLLM server on this machine), and
``locality = "remote"`` forces remote even then, as does a ``proxy`` (the only proxy it uses:
``HTTP_PROXY`` and the like are ignored). A remote provider is denied by engram's default
policy: nothing is sent until a policy allows it, and then only the redacted payload engram hands
over. ``health`` never contacts the endpoint (that would itself be egress); it reports the
configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from engram.plugins import Completion, CostHint, ProviderHealth, http_client_options, locality_of
from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    # httpx is imported, and the client made, at the first request: a daemon starts every
    # installed provider, and importing httpx and building a client (TLS context included) for
    # each took a tenth of a second or more of every start, for providers most starts never call.
    import httpx

__all__ = ["OpenAIConfig", "OpenAIError", "OpenAIProvider"]
__version__ = "0.1.0"


class OpenAIError(RuntimeError):
    """The endpoint answered with an error status or an answer that is not the API's shape."""


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default="https://api.openai.com/v1", description="API root, version prefix included.")
    api_key: SecretStr | None = Field(default=None, description="API key; default: the variable named by api_key_env.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    model: str = Field(default="gpt-4o-mini", description="Chat model when a call names none.")
    embed_model: str = Field(default="text-embedding-3-small", description="Embedding model when a call names none.")
    timeout: float = Field(default=120.0, gt=0, description="Seconds for one HTTP exchange.")
    locality: Literal["auto", "local", "remote"] = Field(
        default="auto", description="auto: local when base_url is loopback, remote otherwise; remote forces remote."
    )
    proxy: str | None = Field(
        default=None,
        description="HTTP proxy to reach base_url through; makes the provider remote. "
        "HTTP_PROXY and the like are ignored.",
    )
    usd_per_1k_input_tokens: float = Field(default=0.0, ge=0, description="Cost hint shown in plugins.list.")
    usd_per_1k_output_tokens: float = Field(default=0.0, ge=0, description="Cost hint shown in plugins.list.")


class OpenAIProvider:
    name = "openai"
    capabilities = frozenset({"generate", "chat", "embed"})
    config_model = OpenAIConfig
    version = __version__

    def __init__(self, config: OpenAIConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.locality = locality_of(config.base_url, config.locality, config.proxy)
        self.cost = CostHint(
            usd_per_1k_input_tokens=config.usd_per_1k_input_tokens,
            usd_per_1k_output_tokens=config.usd_per_1k_output_tokens,
        )
        self._transport = transport
        self._started = False
        self._client: httpx.AsyncClient | None = None

    def _api_key(self) -> str | None:
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        return os.environ.get(self.config.api_key_env) or None

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if not self._started:
            raise OpenAIError("provider not started")
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {key}"} if (key := self._api_key()) else {}
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url.rstrip("/"),
                timeout=self.config.timeout,
                headers=headers,
                transport=self._transport,
                **http_client_options(self.config.proxy),
            )
        return self._client

    async def health(self) -> ProviderHealth:
        key = "an API key" if self._api_key() else f"no API key (set {self.config.api_key_env} or api_key)"
        return ProviderHealth(
            ok=self._started,
            detail=f"{self.locality} endpoint {self.config.base_url}, {key}; not contacted by health checks",
        )

    # --- API -----------------------------------------------------------------------------------

    @staticmethod
    def _prompt_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    def _body(self, messages: list[dict[str, str]], model: str | None, options: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
        return {**(options or {}), "model": model or self.config.model, "messages": messages, "stream": stream}

    async def chat(
        self, messages: list[dict[str, str]], *, model: str | None = None, options: dict[str, Any] | None = None
    ) -> Completion:
        data = await self._post("/chat/completions", self._body(messages, model, options, False))
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise OpenAIError(f"no choices[0].message.content in the answer: {str(data)[:120]}") from exc
        usage = data.get("usage") or {}
        return Completion(
            text=text or "", model=data.get("model"),
            input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
        )

    async def stream_chat(
        self, messages: list[dict[str, str]], *, model: str | None = None, options: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        async with self.client.stream("POST", "/chat/completions", json=self._body(messages, model, options, True)) as response:
            if response.status_code >= 400:
                _raise_for(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": keep-alive" comments, event: lines
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = _json(data.encode())
                if "error" in event:
                    raise OpenAIError(str(event["error"]))
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content

    async def generate(
        self, prompt: str, *, model: str | None = None, system: str | None = None, options: dict[str, Any] | None = None
    ) -> Completion:
        return await self.chat(self._prompt_messages(prompt, system), model=model, options=options)

    async def stream_generate(
        self, prompt: str, *, model: str | None = None, system: str | None = None, options: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        async for chunk in self.stream_chat(self._prompt_messages(prompt, system), model=model, options=options):
            yield chunk

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        data = await self._post("/embeddings", {"model": model or self.config.embed_model, "input": list(texts)})
        rows = sorted(data.get("data") or [], key=lambda row: row.get("index", 0))
        if len(rows) != len(texts):
            raise OpenAIError(f"asked for {len(texts)} embeddings, got {len(rows)}")
        return [[float(x) for x in row["embedding"]] for row in rows]

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        _raise_for(response.status_code, response.content)
        return _json(response.content)


def _json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise OpenAIError(f"not JSON: {content[:80]!r}") from exc
    if not isinstance(data, dict):
        raise OpenAIError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _raise_for(status: int, content: bytes) -> None:
    if status < 400:
        return
    try:
        message = json.loads(content).get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    raise OpenAIError(f"HTTP {status}: {message}" if message else f"HTTP {status}: {content[:120]!r}")
