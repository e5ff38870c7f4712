"""What the tasks part needs of other parts, handed to it by the composition root:

- :class:`AuditTrail`: appending a step's provenance entry, and proving a set of entries against
  one signed checkpoint (the audit log).
- :class:`MethodCalls`: calling a method as a principal through the request chain, for the
  planner and teaching (``infer.generate``, ``route.run``, ``memory.recall``, ...); a
  :class:`engram.tasks.tools.MethodTools` limited to those methods.
- :class:`GenerateReadiness`: whether any generate provider could answer for a principal now,
  so that a goal no planner could plan is refused at once (the providers part).
- :class:`Egress`: the policy's egress decision for the tools of a remote MCP server.
- :class:`Activity`: how many clients' requests are in flight (the tasks give way to them, as
  sleep does; the request chain counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from engram.audit.bundle import ProvenEntries
from engram.principal import Principal

__all__ = ["Activity", "AuditTrail", "Egress", "GenerateReadiness", "MethodCalls"]


class AuditTrail(Protocol):
    async def append(
        self,
        kind: str,
        principal: Any = None,
        *,
        task_id: Any = None,
        parent_id: Any = None,
        input_hash: str | None = None,
        output_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Record one entry; returns its seq once it is durable."""
        ...

    async def prove_entries(self, seqs: list[int]) -> ProvenEntries:
        """The entries with their inclusion proofs in the tree of one signed checkpoint."""
        ...


class Activity(Protocol):
    """Foreground requests as the request chain counts them (``engram.sleep.activity``)."""

    @property
    def foreground(self) -> int:
        """Requests of clients in flight now."""
        ...


class Egress(Protocol):
    """The policy's egress decision (``Policy.require_egress``), for tools whose server is remote:
    raises PolicyDenied unless a rule lets the data go there; the allowed payload (redacted where
    a rule obliges it) is the decision's ``payload``."""

    async def require_egress(
        self, principal: Any, *, method: str | None = None, provider: str, locality: Any = None, payload: Any = None,
    ) -> Any: ...


class MethodCalls(Protocol):
    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        """The method's result as JSON values; raises the RPCError a direct call would get."""
        ...


class GenerateReadiness(Protocol):
    def unready(self, principal: Principal, capability: str, method: str, tags: Sequence[str] = ()) -> str | None:
        """Why no provider of the capability's chain could answer ``method`` for ``principal``
        (none configured or running, or the policy allows none); None when one could."""
        ...
