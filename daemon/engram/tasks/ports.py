"""What the tasks part needs of other parts, handed to it by the composition root: of the audit
log, appending a step's provenance entry and proving a set of entries against one signed
checkpoint; of the policy, the egress decision for the tools of a remote MCP server; of the
request chain, how many clients' requests are in flight (the tasks give way to them, as sleep does)."""

from __future__ import annotations

from typing import Any, Protocol

from engram.audit.bundle import ProvenEntries

__all__ = ["Activity", "AuditTrail", "Egress"]


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
