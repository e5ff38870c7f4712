"""``engram bench sleep``: the click command (kept apart from the benchmark so that starting the
CLI does not import numpy)."""

from __future__ import annotations

import sys

import click

from engram.clitools import Output, errors, json_option

__all__ = ["bench_sleep"]


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
@json_option
def bench_sleep(episodes: int, queries: int, clients: int, rate: float, dim: int, k: int, replay_queries: int,
                timeout: float, stages: tuple[str, ...], as_json: bool) -> None:
    """Recall p50/p99 while idle vs while a consolidation runs, index size and recall@k before/after."""
    from engram.sleep.bench import run_sleep_bench

    with errors():
        report = run_sleep_bench(episodes, queries, clients, rate, dim, k, replay_queries, timeout, list(stages) or None,
                                 progress=not as_json and sys.stderr.isatty())
    Output(as_json).emit(report.as_dict(), lambda _: click.echo(report.table()))
