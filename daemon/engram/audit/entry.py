"""What one audit entry says, and how bus events and served requests become entries.

An entry is a JSON object, stored and hashed as its canonical bytes (:mod:`.canonical`)::

    {"detail": {...}, "input_hash": "<hex>"|null, "kind": "rpc", "output_hash": "<hex>"|null,
     "parent_id": ...|null, "principal": {"uid": 1000, "gid": 1000, "pid": 4242, "user": "ada"}|null,
     "seq": 17, "task_id": 5|null, "time": "2025-01-31T12:00:00.123456Z", "v": 1}

* ``seq`` — the entry's 0-based position in the log, equal to its Merkle leaf index. It is inside
  the hashed bytes, so entries cannot be reordered without changing their leaves.
* ``time`` — UTC, RFC 3339 with microseconds, when the entry was made (for bus events: when the
  event happened).
* ``kind`` — ``"rpc"`` for a served request; the bus topic for an event (``"config.reloaded"``,
  ``"policy.denied"``, ``"memory.deleted"``, ...); ``"audit.gap"`` when events were lost before
  they could be recorded; ``"audit.key_rotated"`` for a signing-key rotation.
* ``principal`` — who asked (kernel-reported peer credentials), ``null`` for the daemon itself.
* provenance — ``task_id`` (the daemon's request serial for ``rpc``), ``parent_id``,
  ``input_hash`` and ``output_hash`` (hex SHA-256 of the canonical JSON of the input/output).
* ``detail`` — what else the kind says: for ``rpc`` the method, outcome and error code; for an
  event its remaining fields.

Content never enters the log, only its hash. Parts that publish audited events say which fields
are content with two optional class attributes of their event class (no change here needed)::

    class MemoryDeleted(Event):
        topic = "memory.deleted"
        audit_hash_fields: ClassVar[tuple[str, ...]] = ("text",)   # recorded as "text_hash"
        audit_omit_fields: ClassVar[tuple[str, ...]] = ("embedding",)  # not recorded at all
        text: str
        task_id: int | None = None   # provenance fields are picked up by name

Event fields named ``principal``, ``task_id``, ``parent_id``, ``input_hash`` and ``output_hash``
fill the entry's own members of those names. An event whose ``audit`` (a boolean field, or a
property) is false is not recorded at all: that is how a part publishes routine happenings (an
allowed call, say) on an audited topic without filling the log with them, and how it leaves out
what an entry already records (one fact, one entry; see docs/audit.md).
"""

from __future__ import annotations

import json
import time as _time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engram.audit.canonical import canonical_json, content_hash

__all__ = [
    "ENTRY_VERSION",
    "KIND_GAP",
    "KIND_KEY_ROTATED",
    "KIND_RPC",
    "PROVENANCE_FIELDS",
    "Record",
    "build_entry",
    "event_record",
    "format_time",
    "is_audited",
    "parse_entry",
    "request_record",
]

ENTRY_VERSION = 1
KIND_RPC = "rpc"
KIND_GAP = "audit.gap"
KIND_KEY_ROTATED = "audit.key_rotated"
PROVENANCE_FIELDS = ("task_id", "parent_id", "input_hash", "output_hash")

_NO_VALUE = object()
_raw_decode = json.JSONDecoder().raw_decode


def format_time(unix: float) -> str:
    """RFC 3339 UTC with microseconds: ``2025-01-31T12:00:00.123456Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Record:
    """An entry before it has a ``seq``: everything the writer needs to build its bytes.

    ``input``/``output`` hold raw JSON values to be hashed by the writer thread (hashing a large
    result must not run on the event loop); ``input_hash``/``output_hash`` are used as they are
    when the producer already has the hash.
    """

    kind: str
    time: float = field(default_factory=_time.time)
    principal: dict[str, Any] | None = None
    task_id: Any = None
    parent_id: Any = None
    input_hash: str | None = None
    output_hash: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    input: Any = _NO_VALUE
    output: Any = _NO_VALUE


def build_entry(seq: int, record: Record) -> bytes:
    """The canonical bytes of the entry at ``seq`` (computes pending content hashes)."""
    input_hash = record.input_hash
    if record.input is not _NO_VALUE:
        input_hash = content_hash(record.input)
    output_hash = record.output_hash
    if record.output is not _NO_VALUE:
        output_hash = content_hash(record.output)
    return canonical_json(
        {
            "v": ENTRY_VERSION,
            "seq": seq,
            "time": format_time(record.time),
            "kind": record.kind,
            "principal": record.principal,
            "task_id": record.task_id,
            "parent_id": record.parent_id,
            "input_hash": input_hash,
            "output_hash": output_hash,
            "detail": record.detail,
        }
    )


def parse_entry(data: bytes) -> dict[str, Any]:
    """Decode stored entry bytes; raises ``ValueError`` when they are not a JSON object with an
    integer ``seq`` and a string ``kind``."""
    try:
        text = data.decode("utf-8")
        obj, end = _raw_decode(text)  # json.loads minus its per-call overhead (the verify hot path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if end != len(text):
        raise ValueError("not valid JSON (extra data after the object)")
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError("has no integer 'seq'")
    if not isinstance(obj.get("kind"), str):
        raise ValueError("has no string 'kind'")
    return obj


def principal_dict(principal: Any) -> dict[str, Any] | None:
    if principal is None:
        return None
    if hasattr(principal, "model_dump"):
        return principal.model_dump(mode="json")
    return dict(principal)


def request_record(
    *,
    method: str,
    principal: Any,
    request: int,
    params: Any,
    result: Any = None,
    error_code: int | None = None,
    error_reason: str | None = None,
    connection: int | None = None,
) -> Record:
    """The record of one served RPC request. ``params`` is what the client sent (``{}`` when it
    sent none), ``result`` the result object without ``audit_seq``; errors have no output hash."""
    ok = error_code is None
    return Record(
        kind=KIND_RPC,
        principal=principal_dict(principal),
        task_id=request,
        detail={
            "method": method,
            "outcome": "ok" if ok else "error",
            "error_code": error_code,
            "error_reason": error_reason,
            "connection": connection,
        },
        input={} if params is None else params,
        output=result if ok else _NO_VALUE,
    )


def is_audited(event: Any) -> bool:
    """False for an event that says ``audit`` false about itself (see the module docstring)."""
    return getattr(event, "audit", True) is not False


def event_record(event: Any) -> Record:
    """The record of an audited bus event (see the module docstring for the field conventions)."""
    cls = type(event)
    hashed = set(getattr(cls, "audit_hash_fields", ()))
    omitted = set(getattr(cls, "audit_omit_fields", ()))
    data = event.model_dump(mode="json")
    when = data.pop("time", None)
    data.pop("audit", None)  # the recording decision itself, not part of what happened
    principal = data.pop("principal", None)
    provenance = {name: data.pop(name, None) for name in PROVENANCE_FIELDS}
    detail: dict[str, Any] = {}
    for name, value in data.items():
        if name in omitted:
            continue
        if name in hashed:
            detail[f"{name}_hash"] = None if value is None else content_hash(value)
        else:
            detail[name] = value
    return Record(
        kind=cls.topic,
        time=when if isinstance(when, (int, float)) else _time.time(),
        principal=principal,
        detail=detail,
        **provenance,
    )
