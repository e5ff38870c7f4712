"""The import rules of docs/architecture.md hold: the contracts of .importlinter are kept.

Shared modules sit below the parts, the parts below the composition root, the composition root
below the command line, and the feature parts import nothing of each other but their declared
interfaces (a part's ``api`` and ``settings`` modules).
"""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

CONFIG = Path(__file__).resolve().parents[3] / ".importlinter"


def test_the_import_contracts_are_kept() -> None:
    assert lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True) == 0
