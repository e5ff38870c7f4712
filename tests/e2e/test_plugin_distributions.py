"""The provider plugin distributions stand on their own: each one's tests pass from a copy of its
folder alone, under its own pytest settings rather than the repository's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.mark.parametrize("distribution", ["engram-ollama", "engram-openai"])
def test_a_plugins_tests_pass_from_a_copy_of_its_folder(distribution: str, tmp_path: Path) -> None:
    pytest.importorskip(distribution.replace("-", "_"), reason="make test installs the plugins/ distributions")
    # Outside the repository no configuration above the folder applies: its own has to do.
    copy = shutil.copytree(PLUGINS / distribution, tmp_path / distribution,
                           ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=copy,
                         capture_output=True, text=True, timeout=110, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"rootdir: {copy}" in run.stdout and "configfile: pyproject.toml" in run.stdout
