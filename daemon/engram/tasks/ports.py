"""What the tasks part needs of the audit log, handed to it by the composition root: appending a
step's provenance entry, and proving a set of entries against one signed checkpoint."""

from __future__ import annotations

from typing import Any, Protocol

from engram.audit.bundle import ProvenEntries

__all__ = ["AuditTrail"]


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
