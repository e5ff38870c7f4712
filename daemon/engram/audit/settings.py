"""The ``[audit]`` section of the configuration (read at start; a change needs a restart)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuditSettings"]


class AuditSettings(BaseModel):
    """The signed audit log: its signing key, group commit, checkpoint cadence, queue bounds."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    signing_key_file: Path | None = Field(
        default=None,
        description=(
            "The audit signing key, outside the state folder: a file only engramd's user can read "
            "(mode 0600 or 0400), made with `engram audit keygen`; engramd never writes it. Unset: "
            "the systemd credential engram-audit.key if the unit passes one, else "
            "<state_dir>/keys/audit.key, created on first start."
        ),
    )

    checkpoint_every_entries: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description="Sign a checkpoint once this many entries were appended since the last one.",
    )
    checkpoint_every_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Sign a checkpoint at least this often while entries keep arriving (and always at shutdown).",
    )
    max_batch: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Most entries written in one transaction (group commit).",
    )
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description=(
            "How long the writer waits for more entries before committing a batch that is not full. "
            "0 commits at once: entries that arrive while a commit is on its way to disk still form "
            "the next batch, which is group commit without added latency."
        ),
    )
    read_commit_delay_ms: float = Field(
        default=50.0,
        ge=0,
        le=1000,
        description=(
            "How long the entries nobody waits for (reads' rpc entries, audited bus events) may gather "
            "before they are committed, so that one commit carries many; a crash can lose the reads "
            "answered in this window. An entry someone waits for (any other audited request) is "
            "committed at once, with everything queued before it. 0: no gathering."
        ),
    )
    queue_size: int = Field(
        default=16_384,
        ge=1,
        le=1_000_000,
        description="Entries waiting to be written; an audited request that finds the queue full fails with -32003.",
    )
    event_queue: int = Field(
        default=65_536,
        ge=16,
        le=1_000_000,
        description="Audited bus events buffered before they are recorded; overflow is logged as an audit.gap entry.",
    )
    append_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds an audited request waits for its entry to be durable before it fails with -32005.",
    )

    @field_validator("signing_key_file", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # As for state_dir: a relative path is resolved once, against the folder engramd starts in.
        return None if value is None else Path(os.path.abspath(value.expanduser()))
