"""The ``[policy]`` section of the configuration (live: SIGHUP and ``policy.reload`` re-read it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PolicySettings", "BASE_POLICIES"]

# Policies shipped inside the package (engram/policy/shipped/<name>.toml).
BASE_POLICIES = ("local-first", "privacy")


class PolicySettings(BaseModel):
    """Which policy files are in force, and the privacy-mode switch."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    base: Literal["local-first", "privacy", "none"] = Field(
        default="local-first",
        description=(
            "The shipped policy loaded first: local-first (owner may do everything local, others nothing, "
            "no remote providers), privacy (the same plus privacy mode and an explicit remote deny), or none "
            "(only the files in policy.files; nothing is allowed unless they say so)."
        ),
    )
    files: list[Path] = Field(
        default_factory=list,
        description=(
            "More policy files loaded after the base, in order; a directory stands for the *.toml files in it, "
            "in name order. Their rules add to the base (deny overrides allow)."
        ),
    )
    privacy_mode: bool = Field(
        default=False,
        description="Start in privacy mode: every route goes to local targets, whatever the rules say.",
    )
    decision_cache: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Method decisions remembered per (uid, gid, method) between reloads; 0 turns the cache off.",
    )
    max_buckets: int = Field(
        default=10_000,
        ge=16,
        le=10_000_000,
        description="Rate-limit token buckets kept (one per limit, principal and provider); the least recently used go first.",
    )
    inline_redaction_bytes: int = Field(
        default=65_536,
        ge=0,
        le=1 << 30,
        description="Text payloads up to this many characters are redacted on the event loop; larger ones, and JSON structures, in a worker thread.",
    )
    temporal_queue: int = Field(
        default=4096,
        ge=16,
        le=1_000_000,
        description="Events queued for the temporal rules' monitors (the bus subscription); when full, the oldest are dropped.",
    )
    temporal_max_points: int = Field(
        default=65_536,
        ge=16,
        le=10_000_000,
        description="Most points a temporal subformula or an obligation keeps pending; beyond it the oldest are dropped (counted).",
    )
