"""Helpers of the policy unit tests: policies from TOML text, principals, a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from engram.policy.loader import LoadedFile, PolicySet, load_policy_file, parse_policy, shipped_policy
from engram.principal import Principal

OWNER = 1000


def principal(uid: int, gid: int | None = None, user: str | None = None) -> Principal:
    return Principal(uid=uid, gid=uid if gid is None else gid, pid=1, user=user)


def policy_set(*texts: str, base: str | None = "local-first") -> PolicySet:
    files = [load_policy_file(shipped_policy(base), f"shipped:{base}")] if base else []
    for index, text in enumerate(texts):
        label = f"test-{index}.toml"
        files.append(LoadedFile(label, Path(label), "", parse_policy(text, label)))
    return PolicySet(files)


class FakeClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.value = now or datetime(2025, 1, 6, 12, 0, tzinfo=UTC)  # a Monday, noon UTC
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.value

    def monotonic(self) -> float:
        return self.mono
