"""Bus events the audit log publishes, and the topics it records.

``AUDITED_TOPICS`` are the bus topic patterns whose events become audit entries. Later parts need
no change here when their topics fall under one of the patterns (``policy.*``, ``memory.*``,
``model.*``, ``sleep.*``, ``route.*``, ...); a part with other topics passes its patterns to
:meth:`engram.audit.log.AuditLog.watch` in the composition root. ``audit.*`` is never recorded:
the log does not log itself through the bus.
"""

from __future__ import annotations

from pydantic import Field

from engram.bus.events import Event, Priority

__all__ = ["AUDITED_TOPICS", "AUDIT_EVENTS", "AuditAppended", "CheckpointSigned", "KeyRotated"]

AUDITED_TOPICS: tuple[str, ...] = (
    "daemon.started",
    "daemon.stopping",
    "config.reloaded",
    "plugin.loaded",
    "plugin.failed",
    "policy.*",
    "memory.*",
    "model.*",
    "models.*",
    "inference.*",
    "route.*",
    "router.*",
    "sleep.*",
)


class AuditAppended(Event):
    """A batch of entries became durable (one group commit)."""

    topic = "audit.appended"
    first_seq: int = Field(description="seq of the first entry of the batch.")
    count: int = Field(description="Entries in the batch.")
    size: int = Field(description="Entries in the log after the batch.")


class CheckpointSigned(Event):
    topic = "audit.checkpoint"
    size: int
    root: str = Field(description="Base64 Merkle root at that size.")
    key_id: str = Field(description="Hex key ID of the signing key.")


class KeyRotated(Event):
    topic = "audit.key_rotated"
    priority = Priority.CONTROL
    old_vkey: str
    new_vkey: str
    size: int = Field(description="Log size at the rotation checkpoint.")


AUDIT_EVENTS: tuple[type[Event], ...] = (AuditAppended, CheckpointSigned, KeyRotated)
