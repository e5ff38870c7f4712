"""``engram bench tasks``: what the task executor adds per step to calling the same tools directly.

The same work, in one run, on one fresh engramd (knowledge extraction off, so no background
parsing of the stored texts lands in the figures):

- **direct**: the S tool calls sent over the socket one after the other, each after the answer
  of the one before, the client putting the remembered id into the next ``memory.get``;
- **task**: the same S steps as one plan, ``memory.get`` taking the id by ``$from``, sent with
  ``task.submit`` and waited for by following ``task.ended`` on an ``events.subscribe`` of the
  same connection. Events rather than polling ``task.get``: a poll would round every task's time
  up to its interval and add its own requests to the daemon's work while the task runs.

The steps alternate ``memory.remember`` of a short, new text with an explicit 8-dimensional
vector (no embedding model needed) and ``memory.get`` of the id it returned. With ``mcp`` every
step is instead the ``echo`` tool of an MCP server (:mod:`engram_bench.mcp_echo`) that the daemon
runs (``tasks.mcp_servers``), each step echoing what the one before returned; the direct calls
then go through the MCP SDK's own client (``ClientSession`` over stdio) to a second copy of the
server that the bench starts itself: the figure is what a task step adds to calling the server
directly. The two ways take
turns, one run each, so that load changing during the bench falls on both alike. A run's time per
step is its wall time over S; the executor's overhead per step is the task's minus the direct
calls' at the median. The daemon's CPU time per step (``/proc/<pid>/stat``, Linux) is beside
them, since it moves less than wall time when the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_bench.processes import temporary_daemon
from engram_bench.rpc import cpu_seconds, server_pid
from engram_bench.stats import Measurement, measure

__all__ = ["TasksReport", "run_tasks_bench"]

DIM = 8
EVENT_WAIT = 60.0  # seconds a task may take before the run counts it as an error
MCP_SERVER = Path(__file__).resolve().parent / "mcp_echo.py"
MCP_TOOL = "mcp:bench.echo"


def _vector(step: int) -> list[float]:
    return [1.0 if i == step % DIM else 0.1 for i in range(DIM)]


def _steps(run: int, count: int, side: str) -> list[tuple[str, dict[str, Any]]]:
    """(tool, args) of each step; a ``memory.get`` takes the id the step before remembered,
    written here as its ``$from`` reference. Texts are new in every run, so no remember is a
    duplicate that the store would answer without writing."""
    steps = []
    for i in range(count):
        if i % 2 == 0:
            item = {"text": f"bench tasks {side} run {run} step {i}", "vector": _vector(i)}
            steps.append(("memory.remember", {"items": [item]}))
        else:
            steps.append(("memory.get", {"ids": [{"$from": f"s{i - 1}.ids.0"}]}))
    return steps


def _mcp_steps(run: int, count: int, side: str) -> list[tuple[str, dict[str, Any]]]:
    """Echo steps: the first is given a new text, each later one what the one before returned."""
    first = (MCP_TOOL, {"text": f"bench mcp {side} run {run}"})
    return [first, *((MCP_TOOL, {"text": {"$from": f"s{i - 1}.text"}}) for i in range(1, count))]


async def _direct_mcp(session: Any, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """The echo steps as calls through the MCP SDK's client, each given the text the last returned."""
    text = steps[0][1]["text"]
    for _ in steps:
        result = await session.call_tool("echo", {"text": text}, read_timeout_seconds=EVENT_WAIT)
        if result.is_error or result.structured_content is None:
            raise RuntimeError(f"the echo tool failed: {result.content}")
        text = result.structured_content["text"]


async def _mcp_session(stack: AsyncExitStack) -> Any:
    """A client session with a copy of the echo server of the bench's own."""
    from mcp.client import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    read, write = await stack.enter_async_context(
        stdio_client(StdioServerParameters(command=sys.executable, args=[str(MCP_SERVER)]))
    )
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    await session.list_tools()  # as the daemon does: the client then knows the tool's output schema
    return session


def _plan(steps: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"steps": [
        {"id": f"s{i}", "tool": tool, "args": args, **({"needs": [f"s{i - 1}"]} if i else {})}
        for i, (tool, args) in enumerate(steps)
    ]}


async def _direct(client: Any, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """The steps as direct calls, resolving each ``$from`` on the client's side."""
    remembered = ""
    for tool, args in steps:
        if tool == "memory.get":
            args = {"ids": [remembered]}
        result = await client.call(tool, args)
        if tool == "memory.remember":
            remembered = result["ids"][0]


async def _task(client: Any, events: Any, steps: list[tuple[str, dict[str, Any]]]) -> tuple[float, bool]:
    """Submit the steps as one task and wait for its end; the submit's round trip in seconds and
    whether the task was done."""
    started = time.perf_counter()
    task_id = (await client.call("task.submit", {"plan": _plan(steps)}))["task_id"]
    submitted = time.perf_counter() - started
    while True:
        event = await events.receive(timeout=EVENT_WAIT)
        if event["data"]["task_id"] == task_id:
            return submitted, event["data"]["state"] == "done"


@dataclass
class TasksReport:
    runs: int
    steps: int
    mcp: bool = False  # the steps call an MCP server's echo tool
    direct: Measurement | None = None  # latencies: seconds per step of each run
    task: Measurement | None = None
    submit: Measurement | None = None  # task.submit's round trip alone, per task
    cpu_ms_per_step: dict[str, float | None] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def overhead_ms(self) -> float:
        assert self.direct is not None and self.task is not None
        return self.task.p50_ms - self.direct.p50_ms

    @property
    def ratio(self) -> float:
        assert self.direct is not None and self.task is not None
        return self.task.p50_ms / self.direct.p50_ms if self.direct.p50_ms else float("nan")

    def as_dict(self) -> dict:
        assert self.direct is not None and self.task is not None and self.submit is not None
        return {
            "benchmark": "tasks",
            "tool": MCP_TOOL if self.mcp else "memory",
            "runs": self.runs,
            "steps": self.steps,
            "rows": [
                {"target": m.target, "p50_ms_per_step": round(m.p50_ms, 3), "p99_ms_per_step": round(m.p99_ms, 3),
                 "runs_per_s": round(m.throughput, 2), "errors": m.errors,
                 "cpu_ms_per_step": _rounded(self.cpu_ms_per_step.get(m.target))}
                for m in (self.direct, self.task)
            ],
            "submit_p50_ms": round(self.submit.p50_ms, 3),
            "tasks_per_s": round(self.task.throughput, 2),
            "overhead_ms_per_step": round(self.overhead_ms, 3),
            "ratio": round(self.ratio, 3),
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
        }

    def table(self) -> str:
        assert self.direct is not None and self.task is not None and self.submit is not None
        what = f"{MCP_TOOL}; direct: the MCP SDK's client" if self.mcp else "memory.remember, memory.get, ..."
        lines = [f"{self.runs} runs of {self.steps} steps each way ({what})",
                 f"{'target':<7} {'p50 ms/step':>11} {'p99 ms/step':>11} {'runs/s':>8} {'CPU ms/step':>11} {'errors':>6}"]
        for m in (self.direct, self.task):
            cpu = self.cpu_ms_per_step.get(m.target)
            shown = f"{cpu:>11.2f}" if cpu is not None else f"{'-':>11}"
            lines.append(f"{m.target:<7} {m.p50_ms:>11.3f} {m.p99_ms:>11.3f} {m.throughput:>8.2f} {shown} {m.errors:>6}")
        lines += [
            f"executor overhead {self.overhead_ms:.3f} ms per step (p50), task/direct {self.ratio:.2f}x; "
            f"{self.task.throughput:.2f} tasks/s; task.submit answers in {self.submit.p50_ms:.3f} ms (p50)",
            "per step = a run's wall time / steps; task: from task.submit until its task.ended event",
            "load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(*self.load_before, *self.load_after),
        ]
        return "\n".join(lines)


async def _bench(sock: Path, runs: int, count: int, report: TasksReport, progress: Any) -> None:
    async with AsyncExitStack() as stack:
        if report.mcp:
            session = await _mcp_session(stack)
            await _measure(sock, runs, count, report, progress, _mcp_steps, lambda client, steps: _direct_mcp(session, steps))
        else:
            await _measure(sock, runs, count, report, progress, _steps, _direct)


async def _measure(sock: Path, runs: int, count: int, report: TasksReport, progress: Any, make_steps: Any,
                   direct: Any) -> None:
    from engram.client.async_client import AsyncClient

    pid = server_pid(sock)
    times: dict[str, list[float]] = {"direct": [], "task": []}
    spent = {"direct": 0.0, "task": 0.0}  # wall seconds
    cpu = {"direct": 0.0, "task": 0.0}  # daemon CPU seconds
    submits: list[float] = []
    errors = 0
    async with AsyncClient(sock, timeout=EVENT_WAIT) as client:
        events = await client.subscribe(["task.ended"])
        # One untimed run each way first: connection set-up, first writes, the workers' first task.
        await direct(client, make_steps(-1, count, "direct"))
        await _task(client, events, make_steps(-1, count, "task"))
        for run in range(runs):
            for side in ("direct", "task"):
                steps = make_steps(run, count, side)
                cpu_before = cpu_seconds(pid)
                started = time.perf_counter()
                if side == "direct":
                    await direct(client, steps)
                else:
                    submitted, done = await _task(client, events, steps)
                    submits.append(submitted)
                    errors += not done
                seconds = time.perf_counter() - started
                cpu_after = cpu_seconds(pid)
                times[side].append(seconds / count)
                spent[side] += seconds
                if cpu_before is not None and cpu_after is not None:
                    cpu[side] += cpu_after - cpu_before
            progress(run + 1)
    report.direct = measure("direct", 1, times["direct"], spent["direct"])
    report.task = measure("task", 1, times["task"], spent["task"], errors)
    report.submit = measure("submit", 1, submits, sum(submits))
    report.cpu_ms_per_step = {side: cpu[side] / (runs * count) * 1000 if pid is not None else None for side in cpu}


def run_tasks_bench(runs: int, steps: int, progress: bool = True, mcp: bool = False) -> TasksReport:
    from rich.progress import Progress

    report = TasksReport(runs, steps, mcp=mcp, load_before=os.getloadavg())
    env = {"ENGRAM_MEMORY__EXTRACTION__ENABLED": "false"}
    if mcp:
        env["ENGRAM_TASKS__MCP_SERVERS"] = json.dumps({"bench": {"command": [sys.executable, str(MCP_SERVER)]}})
    with temporary_daemon(env) as sock, \
            Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("bench tasks", total=runs)
        asyncio.run(_bench(sock, runs, steps, report, lambda done: bar.update(task, completed=done)))
    report.load_after = os.getloadavg()
    return report


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
