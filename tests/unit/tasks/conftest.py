"""What the tasks part's unit tests share: a state folder's database, migrated, for a Tasks part."""

from __future__ import annotations

from pathlib import Path

import pytest
from engram.storage import Database


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "engram.db"
    async with Database(path):  # every part's migrations, the tasks part's among them
        pass
    return path
