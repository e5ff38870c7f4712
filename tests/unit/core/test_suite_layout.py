"""The test suite's own layout: make test collects tests/ and the plugins' tests in one run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_no_two_test_modules_share_a_file_name() -> None:
    # The test folders are not packages, so pytest imports each module by its file name alone:
    # a second test_x.py anywhere stops the whole run with "import file mismatch".
    by_name: dict[str, list[str]] = defaultdict(list)
    for folder in [ROOT / "tests", *sorted((ROOT / "plugins").glob("*/tests"))]:
        for path in folder.rglob("test_*.py"):
            by_name[path.name].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
