"""The ``audit.*`` RPC methods: checkpoints, entries, proofs, keys.

Hashes and canonical bytes travel as standard base64 (as in the transparency-dev conformance
vectors). The read-only methods are not audited themselves (``audit=False``): reading the log
must not grow it. ``audit.rotate_key`` is owner-only and audited.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel, Field

from engram.audit.keyfile import SourceKind
from engram.audit.log import AuditLog
from engram.audit.store import StoredCheckpoint
from engram.errors import IntegrityError, InvalidParams, NotFound
from engram.server.methods import NoParams, Params, RequestContext, Result, rpc

__all__ = ["AuditMethods"]

MAX_PAGE = 1000


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class CheckpointParams(Params):
    fresh: bool = Field(
        default=True,
        description="Sign a new checkpoint first if entries were appended since the last one "
        "(false: return the last stored checkpoint as it is).",
    )


class CheckpointResult(Result):
    note: str = Field(description="The signed checkpoint: a C2SP tlog-checkpoint signed note.")
    size: int = Field(description="Entries the checkpoint covers.")
    root: str = Field(description="Base64 RFC 9162 Merkle root at that size.")
    origin: str = Field(description="The log's origin line.")
    key_id: str = Field(description="Hex key ID of the key that signed it.")
    time: str = Field(description="When it was signed (RFC 3339, UTC).")


class EntryParams(Params):
    seq: int = Field(ge=0, description="The entry's 0-based position in the log.")


class AuditEntry(BaseModel):
    seq: int
    entry: dict[str, Any] = Field(description="The entry, decoded.")
    canonical: str = Field(description="Base64 of the entry's canonical JSON bytes, exactly as hashed.")
    leaf_hash: str = Field(description="Base64 SHA-256(0x00 || canonical bytes).")


class EntryResult(Result):
    seq: int
    entry: dict[str, Any] = Field(description="The entry, decoded.")
    canonical: str = Field(description="Base64 of the entry's canonical JSON bytes, exactly as hashed.")
    leaf_hash: str = Field(description="Base64 SHA-256(0x00 || canonical bytes).")


class EntriesParams(Params):
    start: int = Field(default=0, ge=0, description="First seq to return.")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE, description="Most entries to return.")


class EntriesResult(Result):
    size: int = Field(description="Entries in the log now.")
    entries: list[AuditEntry]


class CheckpointsParams(Params):
    start: int = Field(default=0, ge=0, description="Skip this many checkpoints (oldest first).")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE, description="Most checkpoints to return.")


class StoredCheckpointInfo(BaseModel):
    size: int
    root: str = Field(description="Base64 Merkle root.")
    note: str
    key_id: str
    time: str


class CheckpointsResult(Result):
    total: int = Field(description="Checkpoints stored.")
    checkpoints: list[StoredCheckpointInfo]


class ProveParams(Params):
    seq: int = Field(ge=0, description="The entry to prove.")
    size: int | None = Field(
        default=None,
        ge=1,
        description="Tree size to prove inclusion in (default: the last checkpoint's size if it covers "
        "seq, else the current size).",
    )


class ProveResult(Result):
    leaf_index: int
    tree_size: int
    leaf_hash: str = Field(description="Base64 leaf hash of the entry.")
    root: str = Field(description="Base64 root of the tree of tree_size entries the proof leads to.")
    proof: list[str] = Field(description="Base64 RFC 9162 inclusion proof (audit path), leaf first.")


class ConsistencyParams(Params):
    size1: int = Field(ge=1, description="The older tree size.")
    size2: int = Field(ge=1, description="The newer tree size (at most the log's size).")


class ConsistencyResult(Result):
    size1: int
    size2: int
    root1: str = Field(description="Base64 root at size1.")
    root2: str = Field(description="Base64 root at size2.")
    proof: list[str] = Field(description="Base64 RFC 9162 consistency proof.")


class PubkeyResult(Result):
    vkey: str = Field(description="The current C2SP verifier key.")
    previous: list[str] = Field(description="Verifier keys of earlier (rotated) signing keys.")
    origin: str
    key_source: SourceKind = Field(
        description="Where the signing key comes from: the state folder (keys/audit.key), the file "
        "audit.signing_key_file names, or the systemd credential engram-audit.key."
    )


class RotateKeyResult(Result):
    vkey: str = Field(description="The new verifier key.")
    previous_vkey: str = Field(description="The verifier key that was current until now.")
    note: str = Field(description="The rotation checkpoint, signed by the new key and co-signed by the old one.")
    size: int


def _checkpoint_result(log: AuditLog, cp: StoredCheckpoint) -> CheckpointResult:
    return CheckpointResult(note=cp.note, size=cp.size, root=b64(cp.root), origin=log.origin, key_id=cp.key_id, time=cp.time)


class AuditMethods:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    @rpc("audit.checkpoint", summary="The latest signed checkpoint of the audit log.", audit=False)
    async def checkpoint(self, ctx: RequestContext, params: CheckpointParams) -> CheckpointResult:
        cp = await self._log.checkpoint(fresh=params.fresh)
        if cp is None:
            raise NotFound("the audit log has no checkpoint yet", reason="no_checkpoint")
        return _checkpoint_result(self._log, cp)

    @rpc("audit.entry", summary="One audit entry, its canonical bytes and leaf hash.", audit=False)
    async def entry(self, ctx: RequestContext, params: EntryParams) -> EntryResult:
        size = self._log.size
        found = await self._log.read(self._log.store.entry, params.seq) if params.seq < size else None
        if found is None:
            raise NotFound(f"no audit entry {params.seq}; the log has {size} entries", seq=params.seq, size=size)
        data, leaf = found
        return EntryResult(seq=params.seq, entry=json.loads(data), canonical=b64(data), leaf_hash=b64(leaf))

    @rpc("audit.entries", summary="A page of audit entries in seq order (for tail and export).", audit=False)
    async def entries(self, ctx: RequestContext, params: EntriesParams) -> EntriesResult:
        size = self._log.size
        limit = max(0, min(params.limit, size - params.start))
        rows = await self._log.read(self._log.store.entries, params.start, limit) if limit else []
        return EntriesResult(
            size=size,
            entries=[AuditEntry(seq=s, entry=json.loads(d), canonical=b64(d), leaf_hash=b64(h)) for s, d, h in rows],
        )

    @rpc("audit.checkpoints", summary="Stored checkpoints, oldest first (for export).", audit=False)
    async def checkpoints(self, ctx: RequestContext, params: CheckpointsParams) -> CheckpointsResult:
        store = self._log.store
        rows = await self._log.read(store.checkpoints, params.start, params.limit)
        total = await self._log.read(store.checkpoint_count)
        return CheckpointsResult(
            total=total,
            checkpoints=[
                StoredCheckpointInfo(size=c.size, root=b64(c.root), note=c.note, key_id=c.key_id, time=c.time) for c in rows
            ],
        )

    @rpc("audit.prove", summary="Inclusion proof of an entry in the tree of a given size.", audit=False)
    async def prove(self, ctx: RequestContext, params: ProveParams) -> ProveResult:
        current = self._log.size
        if params.seq >= current:
            raise NotFound(f"no audit entry {params.seq}; the log has {current} entries", seq=params.seq, size=current)
        size = params.size
        if size is None:
            last = self._log.last_checkpoint
            size = last.size if last is not None and last.size > params.seq else current
        if not params.seq < size <= current:
            raise InvalidParams(
                f"size: must be greater than seq ({params.seq}) and at most the log size ({current})",
                field="size",
                reason="bad_tree_size",
            )
        store = self._log.store
        try:
            proof, root, found = await self._log.read(
                lambda: (store.inclusion_proof(params.seq, size), store.root(size), store.entry(params.seq))
            )
        except LookupError as exc:
            raise IntegrityError(f"the audit tree is incomplete: {exc}", reason="audit_node_missing") from None
        return ProveResult(
            leaf_index=params.seq, tree_size=size, leaf_hash=b64(found[1]), root=b64(root), proof=[b64(p) for p in proof]
        )

    @rpc("audit.consistency", summary="Consistency proof between two tree sizes of the audit log.", audit=False)
    async def consistency(self, ctx: RequestContext, params: ConsistencyParams) -> ConsistencyResult:
        current = self._log.size
        if params.size2 > current:
            raise InvalidParams(f"size2: the log has only {current} entries", field="size2", reason="bad_tree_size")
        if params.size1 > params.size2:
            raise InvalidParams("size1: must not exceed size2", field="size1", reason="bad_tree_size")
        store = self._log.store
        try:
            proof, root1, root2 = await self._log.read(
                lambda: (
                    store.consistency_proof(params.size1, params.size2),
                    store.root(params.size1),
                    store.root(params.size2),
                )
            )
        except LookupError as exc:
            raise IntegrityError(f"the audit tree is incomplete: {exc}", reason="audit_node_missing") from None
        return ConsistencyResult(
            size1=params.size1, size2=params.size2, root1=b64(root1), root2=b64(root2), proof=[b64(p) for p in proof]
        )

    @rpc("audit.pubkey", summary="The verifier key of the audit log (C2SP format) and its earlier keys.", audit=False)
    async def pubkey(self, ctx: RequestContext, params: NoParams) -> PubkeyResult:
        keys = self._log.keys
        return PubkeyResult(
            vkey=keys.current.key_string(),
            previous=[v.key_string() for v in keys.previous],
            origin=self._log.origin,
            key_source=keys.source.kind,
        )

    @rpc(
        "audit.rotate_key",
        summary="Replace the audit signing key; earlier checkpoints stay verifiable with the earlier keys.",
        owner_only=True,
    )
    async def rotate_key(self, ctx: RequestContext, params: NoParams) -> RotateKeyResult:
        old, new, cp = await self._log.rotate_key()
        return RotateKeyResult(vkey=new, previous_vkey=old, note=cp.note, size=cp.size)
