"""Which locked pins the newest releases would move: ``python requirements/compare.py LOCK...``.

Run by ``make test-latest`` inside the venv that holds the newest versions. Prints one line per
distribution whose installed version differs from its pin in the locks (or that no lock has), so an
upgrade is read before it is made. Pins whose environment marker does not apply to this Python
are skipped.
"""

from __future__ import annotations

import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked_pins(lock: Path) -> dict[str, str]:
    """name -> version of every pin in a ``uv pip compile`` lock that applies here."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if not line or line[0] in " #-":
            continue  # hashes, comments and options continue or precede a requirement
        requirement = Requirement(line.rstrip(" \\"))
        if requirement.marker is None or requirement.marker.evaluate():
            (spec,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def installed_versions() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}


def main(locks: list[Path]) -> int:
    pins = {name: version for lock in locks for name, version in locked_pins(lock).items()}
    installed = installed_versions()
    moved = sorted(name for name in installed.keys() & pins.keys() if installed[name] != pins[name])
    added = sorted(installed.keys() - pins.keys() - {"engram", "engram-ollama", "engram-openai", "pip", "setuptools", "wheel"})
    for name in moved:
        print(f"  {name:<32} {pins[name]:>14} -> {installed[name]}")
    for name in added:
        print(f"  {name:<32} {'(not locked)':>14} -> {installed[name]}")
    print(f"{len(moved)} pin(s) of {', '.join(map(str, locks))} would move, {len(added)} new distribution(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(arg) for arg in sys.argv[1:]]))
