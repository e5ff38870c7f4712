"""``engram bench route``: the router on real data, against always taking the slow path.

Built at run time, deterministically (fixed seeds), from scikit-learn's bundled handwritten digits
(``sklearn.datasets.load_digits``, no download): a small classifier (logistic regression on the
8x8 pixels) and a large one (a soft-voting ensemble of an MLP, extra trees and k-NN), both exported to ONNX with
skl2onnx and registered in a fresh daemon with ``models.add``. The data is split into train,
calibration and test parts; the held-out test part goes through ``route.run`` one request at a
time under each mode: fast only, slow only (the baseline), cascade at several thresholds, the
cascade at the threshold ``route.calibrate`` chose on the calibration part, and the learned router
(mode auto, its assessor trained online on the calibration part, then calibrated there). Nothing
is tuned on the test part.

Needs the ``bench`` extra (scikit-learn, skl2onnx, matplotlib).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engram_bench.stats import Measurement, measure

__all__ = ["RouteBenchReport", "build_models", "run_route_bench"]

ROUTE = "digits"


class Size(NamedTuple):
    """How much of the digits a run uses, and how big its slow classifier is."""

    test_n: int | None  # held-out digits per mode (None: all)
    cal_n: int | None  # digits for route.calibrate (None: all)
    thresholds: tuple[float, ...]  # the fixed cascade thresholds compared
    mlp_layers: tuple[int, ...] = (512, 512)  # the large ensemble's MLP
    trees: int = 400  # the large ensemble's extremely randomised trees


# tiny shows that the bench works end to end in seconds: its slow path is still the ensemble, at a
# size that trains in a second instead of a minute.
SIZES = {
    "tiny": Size(60, 60, (0.8,), mlp_layers=(64,), trees=40),
    "full": Size(None, None, (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)),
}


@dataclass
class Row:
    name: str
    accuracy: float
    slow_share: float
    measurement: Measurement

    def as_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "mode": self.name, "accuracy": round(self.accuracy, 4), "slow_share": round(self.slow_share, 4),
            "mean_ms": round(m.seconds / max(m.requests, 1) * 1000, 3), "p50_ms": round(m.p50_ms, 3),
            "p99_ms": round(m.p99_ms, 3), "throughput": round(m.throughput, 1), "requests": m.requests,
        }


@dataclass
class RouteBenchReport:
    size: str
    rows: list[Row] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    plot: str | None = None

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def verdict(self) -> dict[str, Any]:
        slow, learned = self.row("slow only"), self.row("learned (auto)")
        relative = learned.accuracy / slow.accuracy if slow.accuracy else 0.0
        return {
            "learned_vs_slow_accuracy": round(relative, 4),
            "learned_slow_share": round(learned.slow_share, 4),
            "learned_vs_slow_mean_latency": round(
                (learned.measurement.seconds / max(learned.measurement.requests, 1))
                / max(slow.measurement.seconds / max(slow.measurement.requests, 1), 1e-12), 4,
            ),
            "target_met": relative >= 0.99 and learned.slow_share <= 0.40,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "rows": [r.as_dict() for r in self.rows], "calibration": self.calibration,
                "verdict": self.verdict(), "plot": self.plot}

    def table(self) -> str:
        head = f"{'mode':<28} {'accuracy':>8} {'slow%':>6} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>8}"
        lines = [f"engram bench route ({self.size}): {self.rows[0].measurement.requests} held-out digits per mode", head]
        for r in self.rows:
            d = r.as_dict()
            lines.append(f"{d['mode']:<28} {d['accuracy']:>8.4f} {d['slow_share'] * 100:>6.1f} {d['mean_ms']:>8.3f} "
                         f"{d['p50_ms']:>7.3f} {d['p99_ms']:>7.3f} {d['throughput']:>8.1f}")
        v = self.verdict()
        lines.append(
            f"learned router vs slow only: accuracy x{v['learned_vs_slow_accuracy']:.4f}, slow path "
            f"{v['learned_slow_share'] * 100:.1f}% of requests, mean latency x{v['learned_vs_slow_mean_latency']:.3f} "
            f"-> target (>= 0.99 x slow accuracy, <= 40% slow) {'met' if v['target_met'] else 'NOT met'}"
        )
        if self.plot:
            lines.append(f"accuracy-cost curve: {self.plot}")
        return "\n".join(lines)


def _data() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
    x_cal, x_test, y_cal, y_test = train_test_split(x_rest, y_rest, test_size=0.6, random_state=0, stratify=y_rest)
    return x_train, y_train, x_cal, y_cal, x_test, y_test


BUILD_STEPS = 3  # the small classifier, the large one, the export: see build_models


def build_models(folder: Path, x_train: np.ndarray, y_train: np.ndarray,
                 step: Callable[[str], None] = lambda _doing: None,
                 mlp_layers: tuple[int, ...] = (512, 512), trees: int = 400) -> tuple[Path, Path]:
    """Train and export the small and the large classifier (input ``x``: float32 [N, 64]).

    Small: logistic regression (~0.05 ms a row). Large: a soft-voting ensemble of an MLP (by
    default 512x512), extremely randomised trees (by default 400) and distance-weighted
    5-nearest-neighbours (~1.5 ms a row, ~20 MB at the default size): more accurate and markedly
    dearer, as a slow path should be. ``step`` is told what begins, BUILD_STEPS times: training
    the large one takes most of the full bench's minute or so.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import ExtraTreesClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    step("training the small classifier")
    small = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    step("training the large classifier")
    large = VotingClassifier(
        [
            ("mlp", MLPClassifier(mlp_layers, max_iter=400, random_state=0)),
            ("trees", ExtraTreesClassifier(trees, random_state=0)),
            ("knn", KNeighborsClassifier(5, weights="distance")),
        ],
        voting="soft",
        flatten_transform=False,  # what skl2onnx converts
    ).fit(x_train, y_train)
    step("exporting both to ONNX")
    paths = []
    for name, model in (("digits-small", small), ("digits-large", large)):
        onx = to_onnx(
            model, initial_types=[("x", FloatTensorType([None, x_train.shape[1]]))],
            options={id(model): {"zipmap": False}}, target_opset=17,
        )
        path = folder / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        paths.append(path)
    return paths[0], paths[1]


def _pass(client: Any, x: np.ndarray, y: np.ndarray, name: str, done: Callable[[], None] = lambda: None,
          **params: Any) -> tuple[Row, list[dict[str, Any]]]:
    """Every row of ``x`` through ``route.run``, one at a time; ``done`` after each."""
    latencies, answers = [], []
    started = time.perf_counter()
    for row in x:
        tensor = {"dtype": "float32", "shape": [1, 64], "data": row.tolist()}
        t0 = time.perf_counter()
        answer = client.call("route.run", {"route": ROUTE, "tensor": tensor, "use_cache": False, **params})
        latencies.append(time.perf_counter() - t0)
        answers.append(answer)
        done()
    seconds = time.perf_counter() - started
    predicted = np.array([a["labels"][0] for a in answers])
    slow = np.mean([a["taken"] == "slow" for a in answers])
    return Row(name, float(np.mean(predicted == y)), float(slow), measure(name, 1, latencies, seconds)), answers


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    cascade = sorted((r for r in rows if r.name.startswith("cascade @")), key=lambda r: r.slow_share)
    if cascade:
        ax.plot([r.slow_share * 100 for r in cascade], [r.accuracy * 100 for r in cascade], "o-", label="cascade thresholds")
    for r in rows:
        if not r.name.startswith("cascade @"):
            ax.plot(r.slow_share * 100, r.accuracy * 100, "s", label=r.name)
    ax.set_xlabel("requests taking the slow path (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("engram HRM router on sklearn digits: accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """One line on stderr, wiped at the end: the build's steps, then the requests. A spinner and
    the elapsed time, because training the large classifier is one long step."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        yield bar


def run_route_bench(size: str = "full", plot: Path | None = None, progress: bool = True) -> RouteBenchReport:
    from engram_bench.processes import temporary_daemon
    from engram.client import Client

    test_n, cal_n, thresholds, mlp_layers, trees = SIZES[size]
    x_train, y_train, x_cal, y_cal, x_test, y_test = _data()
    x_cal, y_cal = x_cal[:cal_n], y_cal[:cal_n]
    x_test, y_test = x_test[:test_n], y_test[:test_n]
    warm_up = 5
    # the warm-up, the calibration part, and the test part once per mode: fast, slow, each
    # threshold, the calibrated threshold, the learned router
    requests = warm_up + len(x_cal) + (len(thresholds) + 4) * len(x_test)
    report = RouteBenchReport(size)
    routes = [{"name": ROUTE, "task": "classify", "fast": "model:digits-small", "slow": "model:digits-large",
               "mode": "cascade", "threshold": 0.8, "fallback": "fail"}]
    env = {"ENGRAM_ROUTER__ROUTES": json.dumps(routes), "ENGRAM_ROUTER__LEARNING__CONSOLIDATE_EVERY": "0"}
    with tempfile.TemporaryDirectory(prefix="engram-route-bench-") as tmp, _progress_bar(progress) as bar:
        task = bar.add_task("building the classifiers", total=BUILD_STEPS)
        steps_begun = iter(range(BUILD_STEPS))
        small, large = build_models(Path(tmp), x_train, y_train,
                                    lambda doing: bar.update(task, description=doing, completed=next(steps_begun)),
                                    mlp_layers=mlp_layers, trees=trees)
        bar.reset(task, total=requests, description="starting engramd")
        with temporary_daemon(env) as sock, Client(sock, timeout=120) as client:

            def measured(x: np.ndarray, y: np.ndarray, name: str, **params: Any) -> tuple[Row, list[dict[str, Any]]]:
                bar.update(task, description=f"route.run: {name}")
                return _pass(client, x, y, name, lambda: bar.advance(task), **params)

            for name, path in (("digits-small", small), ("digits-large", large)):
                client.call("models.add", {"name": name, "path": str(path), "task": "classify"})
            # Warm both models so no pass pays for a load.
            measured(x_cal[:warm_up], y_cal[:warm_up], "warm-up", mode="cascade", threshold=1.0)
            report.rows.append(measured(x_test, y_test, "fast only", mode="fast")[0])
            report.rows.append(measured(x_test, y_test, "slow only", mode="slow")[0])
            for t in thresholds:
                report.rows.append(measured(x_test, y_test, f"cascade @ {t:g}", mode="cascade", threshold=t)[0])
            # Learning on the calibration part: both targets run, every agreement is an outcome.
            client.call("route.reset", {"route": ROUTE})
            measured(x_cal, y_cal, "calibration", mode="cascade", threshold=1.0)
            calibrated = client.call("route.calibrate", {"route": ROUTE, "agreement": 0.995})
            report.calibration = {k: calibrated[k] for k in ("threshold", "auto_threshold", "samples", "expected_slow_share")}
            report.rows.append(measured(x_test, y_test, f"cascade @ calibrated {calibrated['threshold']:.3f}",
                                        mode="cascade")[0])
            report.rows.append(measured(x_test, y_test, "learned (auto)", mode="auto")[0])
    if plot is not None:
        _plot(report.rows, plot)
        report.plot = str(plot)
    return report
