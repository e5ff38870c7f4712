"""The commands engram-bench adds to the ``engram`` CLI: every ``engram bench ...`` and
``engram models conformance``.

engram finds them through the entry-point groups ``engram.cli.bench`` and ``engram.cli.models``
(this distribution's ``pyproject.toml``) and imports this module only when one of them runs or
a ``--help`` lists them. So it imports nothing heavier than click and :mod:`engram.clitools` at
its top; each command imports its benchmark when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engram.clitools import Output, errors, json_option

__all__ = [
    "bench_audit",
    "bench_cli",
    "bench_frames",
    "bench_infer",
    "bench_memory",
    "bench_policy",
    "bench_providers",
    "bench_recall",
    "bench_route",
    "bench_rpc",
    "bench_sequence",
    "bench_sleep",
    "bench_startup",
    "bench_tasks",
    "models_conformance",
]


def _levels(text: str, hint: str) -> list[int]:
    """A comma-separated list of positive integers (client counts)."""
    try:
        levels = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers", param_hint=hint) from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("a comma-separated list of positive integers", param_hint=hint)
    return levels


# --- the daemon's protocol and start-up ------------------------------------------------------------


@click.command("rpc")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=None,
              help="Requests per level (default 20000); with --deadlines, per run (default 2000).")
@click.option("--concurrency", "-c", default="1,8,64", show_default=True, help="Comma-separated client counts.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Measure this running daemon instead of a fresh one.")
@click.option("--deadlines", is_flag=True,
              help="Instead of pings: deadline miss rates of infer.embed under load, earliest-deadline-first off and on.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="With --deadlines: clients.")
@click.option("--model", help="With --deadlines: the embedding model (default: the daemon's default embedder).")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --deadlines: import this BERT sentence-transformers folder first and measure it.")
@click.option("--tight-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --deadlines: share of requests with the tight deadline.")
@click.option("--tight-ms", type=click.IntRange(min=1), help="With --deadlines: the tight deadline (default: 0.75 x the median latency without deadlines).")
@click.option("--loose-ms", type=click.IntRange(min=1), help="With --deadlines: the loose deadline (default: 4 x that median).")
@click.option("--max-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --deadlines: the daemons' inference.batching.max_batch (one batch runs at a time).")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Pings: the load generator on one CPU, the servers on another (with two CPUs or more).")
@json_option
def bench_rpc(
    requests: int | None, concurrency: str, socket_path: Path | None, deadlines: bool, clients: int, model: str | None,
    source: Path | None, tight_share: float, tight_ms: int | None, loose_ms: int | None, max_batch: int, pin: bool,
    as_json: bool,
) -> None:
    """Ping throughput and latency through engramd vs a minimal asyncio echo server; with
    --deadlines, deadline miss rates under load with earliest-deadline-first off and on."""
    if deadlines:
        from engram_bench.deadlines import run_deadlines_bench

        if socket_path is not None:
            raise click.BadParameter("--deadlines starts its own daemons (EDF off and on)", param_hint="--socket")
        with errors():
            report = run_deadlines_bench(requests or 2000, clients, model, source, tight_share, tight_ms, loose_ms,
                                         max_batch, progress=not as_json)
        Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))
        return
    from engram_bench.rpc import run_rpc_bench

    levels = _levels(concurrency, "--concurrency")
    with errors():
        ping_report = run_rpc_bench(requests or 20000, levels, socket_path, progress=not as_json, pin=pin)
    Output(as_json).emit(ping_report.as_dict(), lambda _: click.echo(ping_report.table()))


@click.command("frames")
@click.option("--size", type=click.IntRange(min=1024), default=10_000_000, show_default=True, help="Bytes of each large frame.")
@click.option("--shape", "shapes", multiple=True, type=click.Choice(["texts", "vectors", "string", "numbers", "object"]),
              help="Shapes of frame to send (default: all).")
@json_option
def bench_frames(size: int, shapes: tuple[str, ...], as_json: bool) -> None:
    """How long one large frame holds another client's pings: engramd vs a minimal echo server."""
    from engram_bench.frames import SHAPES, run_frames_bench

    with errors():
        report = run_frames_bench(size, list(shapes or SHAPES), progress=not as_json)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("cli")
@click.option("--runs", "-n", type=click.IntRange(min=1), default=20, show_default=True, help="Runs of each command.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Ping this running daemon instead of a fresh one.")
@json_option
def bench_cli(runs: int, socket_path: Path | None, as_json: bool) -> None:
    """Start-up time of `engram --help` and `engram ping` vs `python -c pass`."""
    from engram_bench.startup import run_cli_bench

    with errors():
        report = run_cli_bench(runs, socket_path, progress=not as_json and sys.stderr.isatty())
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("startup")
@click.option("--runs", "-n", type=click.IntRange(min=1), default=10, show_default=True, help="Starts of engramd.")
@json_option
def bench_startup(runs: int, as_json: bool) -> None:
    """Time from spawning engramd until it answers a ping, its CPU and RSS then, vs `python -c pass`."""
    from engram_bench.ready import run_startup_bench

    with errors():
        report = run_startup_bench(runs, progress=not as_json and sys.stderr.isatty())
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


# --- the parts -------------------------------------------------------------------------------------


@click.command("audit")
@click.option("--entries", "-n", type=click.IntRange(min=10), default=20000, show_default=True, help="Appends per target.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=64, show_default=True, help="Concurrent clients.")
@click.option(
    "--verify-entries", type=click.IntRange(min=10), default=1_000_000, show_default=True, help="Size of the log verified offline."
)
@click.option("--proofs", type=click.IntRange(min=1), default=2000, show_default=True, help="Proofs generated and verified.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Measure this running daemon instead of a fresh one.")
@json_option
def bench_audit(
    entries: int, concurrency: int, verify_entries: int, proofs: int, socket_path: Path | None, as_json: bool
) -> None:
    """Audit append throughput (daemon vs bare), proof times, offline verification of a big log."""
    from engram_bench.audit import run_audit_bench

    with errors():
        report = run_audit_bench(entries, concurrency, verify_entries, proofs, socket_path, progress=not as_json)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("infer")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=1000, show_default=True, help="Requests per level.")
@click.option("--concurrency", "-c", default="1,8,32", show_default=True, help="Comma-separated client counts.")
@click.option("--model", help="Embedding model (default: the daemon's default embedder).")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Import this BERT sentence-transformers folder into the daemon first and measure it.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="intra-op threads for both sides (0: the daemon's setting; the baseline tries 1 and 2).")
@click.option("--int8", is_flag=True,
              help="Make the model's int8 variant first (models.quantize): the default embedder's fast route.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Measure this running daemon instead of a fresh one.")
@json_option
def bench_infer(
    requests: int, concurrency: str, model: str | None, source: Path | None, threads: int, int8: bool,
    socket_path: Path | None, as_json: bool,
) -> None:
    """Single-text embedding throughput and latency through engramd vs an in-process session.run loop."""
    from engram_bench.infer import run_infer_bench

    levels = _levels(concurrency, "--concurrency")
    with errors():
        report = run_infer_bench(requests, levels, model, source, socket_path, threads, progress=not as_json, int8=int8)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("http")
@click.option("--requests", "-n", type=click.IntRange(min=16), default=1000, show_default=True, help="Requests per side and level.")
@click.option("--concurrency", "-c", default="1,8", show_default=True, help="Comma-separated client counts.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              help="Measure this running daemon (with --url, its gateway) instead of a fresh one.")
@click.option("--url", help="The running daemon's gateway, e.g. http://127.0.0.1:8765 (with --socket).")
@json_option
def bench_http(requests: int, concurrency: str, socket_path: Path | None, url: str | None, as_json: bool) -> None:
    """POST /v1/embeddings on the HTTP gateway vs infer.embed over the socket, one text per request."""
    from engram_bench.http_gateway import run_http_bench

    if (socket_path is None) != (url is None):
        raise click.UsageError("--socket and --url go together (a running daemon and its gateway)")
    levels = _levels(concurrency, "--concurrency")
    with errors():
        report = run_http_bench(requests, levels, socket_path, url)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("memory")
@click.option("--sizes", default="10000,100000", show_default=True, help="Comma-separated episode counts to measure at.")
@click.option("--queries", type=click.IntRange(min=1), default=200, show_default=True, help="Recall queries per size.")
@click.option("--forgets", type=click.IntRange(min=0), default=100, show_default=True, help="Forget requests at the largest size.")
@click.option("--embed-sample", type=click.IntRange(min=0), default=256, show_default=True,
              help="Sentences embedded for the with-embedding ingest rate (0: skip it).")
@click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True, help="Episodes per memory.remember.")
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True, help="Concurrent connections for ingest.")
@click.option("--int8", is_flag=True,
              help="Make the default embedder's int8 variant (its fast route) before the with-embedding ingest.")
@json_option
def bench_memory(
    sizes: str, queries: int, forgets: int, embed_sample: int, batch: int, clients: int, int8: bool, as_json: bool
) -> None:
    """Ingest, recall, recall@10 and forget through engramd vs sqlite3 + faiss flat in-process."""
    from engram_bench.memory import run_memory_bench

    try:
        levels = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers", param_hint="--sizes") from None
    if not levels or min(levels) < 10:
        raise click.BadParameter("a comma-separated list of sizes of at least 10", param_hint="--sizes")
    with errors():
        report = run_memory_bench(levels, queries, forgets, embed_sample, batch, clients, progress=not as_json, int8=int8)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("policy")
@click.option("--decisions", "-n", type=click.IntRange(min=1), default=50_000, show_default=True, help="Decisions per measurement.")
@click.option("--rules", type=click.IntRange(min=0), default=50, show_default=True, help="Grant rules added to the default policy.")
@click.option("--payload-kib", type=click.IntRange(min=1), default=16, show_default=True, help="Size of the redaction payload.")
@click.option("--temporal-rules", type=click.IntRange(min=0, max=1000), default=10, show_default=True,
              help="Temporal rules following the event stream.")
@json_option
def bench_policy(decisions: int, rules: int, payload_kib: int, temporal_rules: int, as_json: bool) -> None:
    """Policy decisions, redaction and temporal monitoring through engram's engine vs simple baselines."""
    from engram_bench.policy import run_policy_bench

    with errors():
        report = run_policy_bench(decisions, rules, payload_kib, temporal_rules)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("providers")
@click.option("--calls", type=click.IntRange(min=1), default=500, show_default=True, help="Sequential calls per target.")
@json_option
def bench_providers(calls: int, as_json: bool) -> None:
    """infer.generate through engram vs the same request straight to a fake Ollama."""
    from engram_bench.providers import run_providers_bench

    with errors():
        report = run_providers_bench(calls)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("route")
@click.option("--size", type=click.Choice(["tiny", "full"]), default="full", show_default=True,
              help="tiny: 60 test digits, one cascade threshold (the smoke test); full: the whole held-out set.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=Path("route-bench.png"), show_default=True,
              help="Where the accuracy-cost curve (PNG) goes.")
@json_option
def bench_route(size: str, plot: Path, as_json: bool) -> None:
    """The router on sklearn's digits: fast, slow, cascade and learned routing, in one run
    (progress on stderr, none under --json)."""
    from engram_bench.route import run_route_bench

    with errors():
        report = run_route_bench(size, plot, progress=not as_json)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("sequence")
@click.option("--stored", "-n", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Stored stretches of the query's length (sessions of --session-length episodes).")
@click.option("--length", type=click.IntRange(min=2, max=256), default=16, show_default=True, help="Elements of the query sequence.")
@click.option("--window", type=click.IntRange(min=0), default=2, show_default=True, help="Sakoe–Chiba band.")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Stretches returned.")
@click.option("--dim", type=click.IntRange(min=2), default=384, show_default=True, help="Vector dimension.")
@click.option("--session-length", type=click.IntRange(min=2), default=200, show_default=True, help="Episodes per session.")
@click.option("--planted", type=click.IntRange(min=0), default=10, show_default=True,
              help="Noisy copies of the query planted in the sessions (a recurring routine).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Runs of each search (median shown).")
@json_option
def bench_sequence(stored: int, length: int, window: int, k: int, dim: int, session_length: int, planted: int, repeats: int,
                   as_json: bool) -> None:
    """Sequence recall: the pruned DTW search (lower bounds, early abandoning) vs DTW of every stored stretch."""
    from engram_bench.sequence import run_sequence_bench

    if session_length < length:
        raise click.BadParameter("at least --length", param_hint="--session-length")
    with errors():
        report = run_sequence_bench(stored, length, window, k, dim, session_length, planted, repeats)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("sleep")
@click.option("--episodes", type=click.IntRange(min=50), default=100_000, show_default=True,
              help="Synthetic episodes seeded before the daemon starts.")
@click.option("--queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Recalls measured while idle (and at least the figure hoped for during consolidation).")
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True, help="Concurrent recall connections.")
@click.option("--rate", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Recalls per second in total (exponential think time per client); 0: back to back.")
@click.option("--dim", type=click.IntRange(min=2, max=4096), default=64, show_default=True, help="Vector dimensions.")
@click.option("-k", "k", type=click.IntRange(min=1, max=100), default=10, show_default=True, help="Hits per recall; recall@k.")
@click.option("--replay-queries", type=click.IntRange(min=1), default=200, show_default=True,
              help="Queries of the quality set (recall@k before and after).")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds the index build and the consolidation may take at most.")
@click.option("--stage", "stages", multiple=True, metavar="STAGE",
              help="Run only this stage (repeatable; default: all), to see what one stage costs foreground recall.")
@click.option("--topics-only", is_flag=True,
              help="Only the topic check: sleep's clustering of the labelled note sets (purity, unclustered notes, names).")
@json_option
def bench_sleep(episodes: int, queries: int, clients: int, rate: float, dim: int, k: int, replay_queries: int,
                timeout: float, stages: tuple[str, ...], topics_only: bool, as_json: bool) -> None:
    """Recall p50/p99 while idle vs while a consolidation runs, index size and recall@k before/after;
    then the topics sleep finds in labelled notes (purity)."""
    from engram_bench.sleep import run_sleep_bench, run_topic_bench, topic_lines

    with errors():
        if topics_only:
            topics = run_topic_bench(timeout=min(timeout, 600.0))
            Output(as_json).emit(topics, lambda _: click.echo("\n".join(topic_lines(topics))))
            return
        report = run_sleep_bench(episodes, queries, clients, rate, dim, k, replay_queries, timeout, list(stages) or None,
                                 progress=not as_json and sys.stderr.isatty())
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("tasks")
@click.option("--runs", "-n", type=click.IntRange(min=1), default=200, show_default=True, help="Runs each way.")
@click.option("--steps", type=click.IntRange(min=1, max=100), default=10, show_default=True,
              help="Steps of each run: memory.remember and memory.get in turn (tasks.max_steps is 100).")
@click.option("--mcp", is_flag=True,
              help="Steps call an MCP server's echo tool instead; direct calls go through the MCP SDK's client.")
@json_option
def bench_tasks(runs: int, steps: int, mcp: bool, as_json: bool) -> None:
    """The task executor's overhead per step: a plan of tool calls as one task vs the same calls made directly."""
    from engram_bench.tasks import run_tasks_bench

    with errors():
        report = run_tasks_bench(runs, steps, progress=not as_json and sys.stderr.isatty(), mcp=mcp)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


@click.command("recall")
@click.option("--locomo", "locomo", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="A LoCoMo file (list of conversations), e.g. ../shared/eval/locomo/locomo-dev.json.")
@click.option("--conversations", type=click.IntRange(min=1), help="Only the first N conversations.")
@click.option("--questions", type=click.IntRange(min=1), help="At most N questions of each conversation.")
@click.option("--embedder", help="The daemon's embedding model, for memory and the baseline alike "
              "(default: inference.default_embedder), e.g. all-mpnet-base-v2.")
@json_option
def bench_recall(locomo: Path, conversations: int | None, questions: int | None, embedder: str | None,
                 as_json: bool) -> None:
    """Retrieval quality on LoCoMo (R@1/5/10/20 by category): engramd vs dense retrieval with the same model."""
    from engram_bench.recall import MissingModel, run_recall_bench

    if not locomo.is_file():
        raise click.BadParameter(f"{locomo}: no such file (LoCoMo is read from where it lies, never shipped)",
                                 param_hint="--locomo")
    with errors():
        try:
            report = run_recall_bench(locomo, conversations, questions, progress=not as_json and sys.stderr.isatty(),
                                      embedder=embedder)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--locomo") from None
        except MissingModel as exc:
            raise click.ClickException(str(exc)) from None
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))


# --- engram models conformance ---------------------------------------------------------------------


@click.command("conformance")
@click.option("--all", "run_all", is_flag=True, help="Every node test (default: a spread-out subset).")
@click.option("--limit", type=click.IntRange(min=1), default=40, show_default=True, help="Subset size without --all.")
@click.option("--cases", help="Only cases whose name contains this text.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Use this running daemon instead of a fresh one.")
@json_option
def models_conformance(run_all: bool, limit: int, cases: str | None, socket_path: Path | None, as_json: bool) -> None:
    """Run ONNX's backend node tests through the daemon and directly with ONNX Runtime; compare."""
    from rich.progress import Progress

    from engram.client import Client
    from engram_bench.conformance import (
        conformance_daemon,
        load_cases,
        node_tests_dir,
        run_conformance,
        select_subset,
    )

    with errors():
        root = node_tests_dir()
        selected = load_cases(root)
        if cases:
            selected = [c for c in selected if cases in c.name]
        if not run_all:
            selected = select_subset(selected, limit)
        with conformance_daemon(socket_path) as sock, Client(sock, timeout=120) as client, \
                Progress(transient=True, disable=as_json) as bar:
            task = bar.add_task("conformance", total=len(selected))

            def progress(name: str) -> None:
                bar.update(task, description=name[:40], advance=1)

            report = run_conformance(selected, lambda m, p: client.call(m, p), str(root), progress)
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))
