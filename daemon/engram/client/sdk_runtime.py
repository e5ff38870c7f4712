"""What the generated SDK (``engram.client.sdk``) runs on: namespaces that call through a client.

Kept free of pydantic: the models (``engram.client.sdk_models``) load with the first typed call,
so ``import engram.client`` stays as quick as the untyped client it always was.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engram.client.async_client import AsyncClient
    from engram.client.sync_client import Client


class _Omitted:
    """The default of a keyword the caller did not give: it is not sent, the daemon's applies."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omitted()


def to_wire(value: Any) -> Any:
    """A params value as JSON: SDK models (and any pydantic model) as the fields they were given."""
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, dict):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    return value


def _params(given: dict[str, Any]) -> dict[str, Any]:
    return {name: to_wire(value) for name, value in given.items() if value is not OMIT}


def result_model(name: str) -> Any:
    return getattr(importlib.import_module("engram.client.sdk_models"), name)


class AsyncNamespace:
    __slots__ = ("__dict__", "_client")

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _call(self, method: str, result: str, given: dict[str, Any], timeout: float | None) -> Any:
        answer = await self._client.call(method, _params(given), timeout=timeout)
        return result_model(result).model_validate(answer)


class SyncNamespace:
    __slots__ = ("__dict__", "_client")

    def __init__(self, client: Client) -> None:
        self._client = client

    def _call(self, method: str, result: str, given: dict[str, Any], timeout: float | None) -> Any:
        answer = self._client.call(method, _params(given), timeout=timeout)
        return result_model(result).model_validate(answer)
