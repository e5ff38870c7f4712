"""Clients for a running engramd: :class:`AsyncClient` (anyio) and :class:`Client` (blocking)."""

from engram.client.async_client import AsyncClient, EventStream, resolve_socket
from engram.client.sync_client import Client

__all__ = ["AsyncClient", "Client", "EventStream", "resolve_socket"]
