"""Fixtures for the audit unit tests: migrated databases and small signed logs."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest
from audit_helpers import Log, build_log, migrate  # type: ignore[import-not-found]


@pytest.fixture
def audit_db(tmp_path: Path) -> Path:
    db = tmp_path / "engram.db"
    migrate(db)
    return db


@pytest.fixture
def make_log(tmp_path: Path) -> Callable[..., Log]:
    """``make_log(size, every, batch)``: see :func:`audit_helpers.build_log`."""
    serial = count()

    def make(size: int = 20, every: int = 5, batch: int = 3) -> Log:
        return build_log(tmp_path / f"state{next(serial)}", size, every, batch)

    return make
