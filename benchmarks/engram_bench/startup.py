"""``engram bench cli``: how long the ``engram`` command takes, start to exit, against a bare Python.

Each run is a new process, as when a person or a script calls the command: ``engram --help``
measures the interpreter and the CLI's own imports, ``engram ping`` adds the client, one
connection and one round trip to a running daemon. The baseline, ``python -c pass``, is the
interpreter start-up of the same environment (site-packages and its ``.pth`` files included),
the floor no command can go under; the ratio says what engram adds on top of it.

The three commands take turns (baseline, help, ping, baseline, ...) so that a change in the
machine's load during the run falls on all of them alike.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engram_bench.processes import temporary_daemon

# What the command should stay under at the median (p50), in milliseconds, on the reference machine.
LIMITS_MS = {"help": 300.0, "ping": 400.0}


def engram_command() -> list[str]:
    """This environment's installed ``engram`` script, as a person runs it; ``python -m engram.cli``
    where there is none (running from a source tree)."""
    script = Path(sys.executable).parent / "engram"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "engram.cli"]


@dataclass(frozen=True)
class Timing:
    target: str
    command: str
    runs: int
    p50_ms: float
    p95_ms: float
    errors: int = 0


@dataclass
class CliReport:
    rows: list[Timing] = field(default_factory=list)

    def row(self, target: str) -> Timing:
        return next(t for t in self.rows if t.target == target)

    def ratio(self, target: str, quantile: str) -> float | None:
        baseline = getattr(self.row("baseline"), quantile)
        return round(getattr(self.row(target), quantile) / baseline, 2) if baseline else None

    def verdicts(self) -> list[dict]:
        return [
            {"target": target, "p50_ms": round(self.row(target).p50_ms, 1), "limit_ms": limit,
             "met": self.row(target).p50_ms <= limit}
            for target, limit in LIMITS_MS.items()
        ]

    def as_dict(self) -> dict:
        return {
            "benchmark": "cli",
            "rows": [asdict(t) for t in self.rows],
            "ratios": [
                {"target": t.target, "p50_ratio": self.ratio(t.target, "p50_ms"), "p95_ratio": self.ratio(t.target, "p95_ms")}
                for t in self.rows if t.target != "baseline"
            ],
            "verdict": self.verdicts(),
        }

    def table(self) -> str:
        lines = [f"{'command':<16} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'p50 ratio':>9} {'errors':>6}"]
        for t in self.rows:
            ratio = "" if t.target == "baseline" else f"{self.ratio(t.target, 'p50_ms'):.2f}x"
            lines.append(f"{t.command:<16} {t.runs:>5} {t.p50_ms:>8.1f} {t.p95_ms:>8.1f} {ratio:>9} {t.errors:>6}")
        lines.append("ratio = command / python -c pass (lower is better)")
        for v in self.verdicts():
            lines.append(f"{self.row(v['target']).command}: p50 {v['p50_ms']:.0f} ms, target <= {v['limit_ms']:.0f} ms: "
                         f"{'PASS' if v['met'] else 'FAIL'}")
        return "\n".join(lines)


def _time_run(args: list[str]) -> tuple[float, bool]:
    """Seconds from start to exit of one process, and whether it exited 0."""
    started = time.perf_counter()
    done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started, done.returncode == 0


def _timing(target: str, command: str, seconds: list[float], errors: int) -> Timing:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return Timing(target, command, len(seconds), float(p50), float(p95), errors)


def run_cli_bench(runs: int, socket_path: Path | None = None, progress: bool = True) -> CliReport:
    from rich.console import Console
    from rich.progress import Progress

    engram = engram_command()
    with ExitStack() as stack:
        sock = socket_path or stack.enter_context(temporary_daemon())
        commands = {
            "baseline": ("python -c pass", [sys.executable, "-c", "pass"]),
            "help": ("engram --help", [*engram, "--help"]),
            "ping": ("engram ping", [*engram, "ping", "--socket", str(sock)]),
        }
        for _, args in commands.values():  # once each, uncounted: files into the page cache
            _time_run(args)
        seconds: dict[str, list[float]] = {target: [] for target in commands}
        errors = dict.fromkeys(commands, 0)
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task("bench cli", total=runs * len(commands))
            for _ in range(runs):
                for target, (_, args) in commands.items():
                    elapsed, ok = _time_run(args)
                    seconds[target].append(elapsed)
                    errors[target] += not ok
                    bar.advance(task)
    return CliReport([_timing(target, label, seconds[target], errors[target]) for target, (label, _) in commands.items()])
