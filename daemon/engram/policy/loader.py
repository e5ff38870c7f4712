"""Reading policy files: TOML in, :class:`PolicySet` out, or every problem with file, line and key.

A syntax error carries the line and column tomllib reports. A schema error carries the key path
pydantic reports (``rule[2].actions``) and the line where that key (or the nearest enclosing
table) is written, found by a light scan of the text: tomllib keeps no positions. All files are
read before anything is refused, so one run lists every problem.

Files are read with blocking I/O; the daemon calls :func:`load_policy_set` in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engram.errors import ConfigError
from engram.policy.model import PolicyFile
from engram.policy.settings import BASE_POLICIES, PolicySettings

__all__ = [
    "LoadedFile",
    "PolicyError",
    "PolicyIssue",
    "PolicySet",
    "load_policy_file",
    "load_policy_set",
    "parse_policy",
    "shipped_dir",
    "shipped_policy",
]

_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_TABLE_ARRAY = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in one policy file."""

    file: str
    message: str
    key: str | None = None
    line: int | None = None
    column: int | None = None

    def where(self) -> str:
        place = self.file
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        return place

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.where()}:{key} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "key": self.key, "message": self.message}


class PolicyError(ConfigError):
    """One or more policy files are invalid; ``issues`` says where and why."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        super().__init__(
            "invalid policy:",
            [(f"{issue.where()}" + (f" {issue.key}" if issue.key else ""), issue.message) for issue in issues],
        )


@dataclass(frozen=True)
class LoadedFile:
    label: str  # "shipped:local-first" or the file's path
    path: Path
    sha256: str
    policy: PolicyFile

    @property
    def name(self) -> str:
        return self.policy.name or self.path.stem


@dataclass(frozen=True)
class PolicySet:
    """The files in force, in load order."""

    files: list[LoadedFile] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.files]

    @functools.cached_property  # asked on every decision; a set's files never change
    def privacy_mode(self) -> bool:
        return any(f.policy.privacy_mode for f in self.files)

    @property
    def rule_count(self) -> int:
        return sum(len(f.policy.rules) for f in self.files)

    @property
    def temporal_count(self) -> int:
        return sum(len(f.policy.temporal) for f in self.files)


def shipped_dir() -> Path:
    """The folder of the policies shipped in the package (canonical copies; policies/ mirrors them)."""
    return Path(str(resources.files("engram.policy") / "shipped"))


def shipped_policy(name: str) -> Path:
    return shipped_dir() / f"{name}.toml"


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Where each table and key is written: path (as pydantic reports it) -> 1-based line.

    Understands [table], [[array.of.tables]] and ``key =`` lines, which is how policy files are
    written; values spread over several lines keep the line where their key starts.
    """
    positions: dict[tuple[Any, ...], int] = {}
    counts: dict[tuple[str, ...], int] = {}
    current: tuple[Any, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _TABLE_ARRAY.match(line):
            names = tuple(part.strip().strip('"') for part in match.group(1).split("."))
            index = counts.get(names, 0)
            counts[names] = index + 1
            # Nested arrays ([[redaction.pattern]]) hang under the latest parent element.
            current = _under(names, counts) + (index,)
            positions.setdefault(current, number)
        elif match := _TABLE.match(line):
            names = tuple(part.strip().strip('"') for part in match.group(1).split("."))
            current = _under(names, counts)
            positions.setdefault(current, number)
        elif match := _KEY.match(line):
            positions.setdefault(current + (match.group(1).strip('"'),), number)
    return positions


def _under(names: tuple[str, ...], counts: dict[tuple[str, ...], int]) -> tuple[Any, ...]:
    path: list[Any] = []
    for depth, name in enumerate(names):
        path.append(name)
        parent = tuple(names[: depth + 1])
        if depth < len(names) - 1 and parent in counts:  # an array of tables: its latest element
            path.append(counts[parent] - 1)
    return tuple(path)


def _line_of(loc: tuple[Any, ...], positions: dict[tuple[Any, ...], int]) -> int | None:
    for size in range(len(loc), 0, -1):
        if (line := positions.get(loc[:size])) is not None:
            return line
    return None


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_policy(text: str, source: str) -> PolicyFile:
    """Parse one policy file's text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.search(str(exc))
        message = _TOML_POSITION.sub("", str(exc)).strip()
        line, column = (int(position.group(1)), int(position.group(2))) if position else (None, None)
        raise PolicyError([PolicyIssue(source, f"not valid TOML: {message}", None, line, column)]) from None
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        positions = _key_lines(text)
        issues = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            issues.append(PolicyIssue(source, _message(error), _loc(loc) or None, _line_of(loc, positions)))
        raise PolicyError(issues) from None


def load_policy_file(path: Path, label: str | None = None) -> LoadedFile:
    label = label or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError([PolicyIssue(label, "file does not exist")]) from None
    except OSError as exc:
        raise PolicyError([PolicyIssue(label, f"cannot be read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([PolicyIssue(label, f"not UTF-8 text (byte {exc.start})")]) from None
    return LoadedFile(label, path, hashlib.sha256(raw).hexdigest(), parse_policy(text, label))


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.glob("*.toml") if p.is_file())
        else:
            out.append(path)
    return out


def load_policy_set(settings: PolicySettings) -> PolicySet:
    """The base policy and ``policy.files``, validated together, or a :class:`PolicyError`."""
    sources: list[tuple[Path, str | None]] = []
    if settings.base != "none":
        assert settings.base in BASE_POLICIES
        sources.append((shipped_policy(settings.base), f"shipped:{settings.base}"))
    sources += [(path, None) for path in _expand(settings.files)]
    return check_files(sources)


def check_files(sources: list[tuple[Path, str | None]]) -> PolicySet:
    """Load ``(path, label)`` pairs as one set: every file valid, names unique across files."""
    issues: list[PolicyIssue] = []
    loaded: list[LoadedFile] = []
    for path, label in sources:
        try:
            loaded.append(load_policy_file(path, label))
        except PolicyError as exc:
            issues += exc.issues
    owners: dict[tuple[str, str], str] = {}
    for file in loaded:
        # Rules and temporal rules share names: a denial's data.rule names either.
        for kind, key, items in (
            ("rule", "rule", file.policy.rules), ("rule", "temporal", file.policy.temporal), ("limit", "limit", file.policy.limits)
        ):
            for index, item in enumerate(items):
                if (other := owners.get((kind, item.name))) is not None:
                    issues.append(
                        PolicyIssue(file.label, f"{kind} name {item.name!r} is already used in {other}", f"{key}[{index}].name")
                    )
                else:
                    owners[(kind, item.name)] = file.label
    if issues:
        raise PolicyError(issues)
    return PolicySet(loaded)
