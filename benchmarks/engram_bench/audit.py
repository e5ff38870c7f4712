"""``engram bench audit``: the audit log measured through the daemon and bare, in one run.

1. *append* — the same kind of entry (an ``rpc`` entry with input and output hashes) appended
   through a running engramd (C concurrent clients calling :data:`AUDITED_METHOD`, an audited
   method that changes nothing and costs next to nothing, so each request waits for its entry's
   group commit and the row measures the audit log, not the method) and bare, in this process, through the
   same :class:`~engram.audit.store.AuditStore` code with no daemon: one transaction per entry,
   and batches of ``audit.max_batch``. ``system.ping`` (not audited) on the same daemon shows
   the request path without an audit entry.
2. *proofs* — inclusion and consistency proofs generated from the SQLite node table of a
   ``--verify-entries`` log and verified, against the same proofs from an in-memory tree.
3. *verify* — ``engram audit verify`` of that whole log (read-only state folder: every leaf, every
   checkpoint signature, tree state and nodes) against the bare minimum: recomputing the root.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from engram.audit.checkpoints import sign_checkpoint
from engram.audit.entry import request_record
from engram.audit.export import StateFolderSource
from engram.audit.merkle import (
    MerkleTree,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from engram.audit.settings import AuditSettings
from engram.audit.store import AuditStore
from engram.audit.verify import verify_log
from engram.principal import Principal
from engram.signing import Signer, Verifier, generate_signer
from engram.storage import Database
from engram_bench.processes import temporary_daemon
from engram_bench.stats import Measurement, measure

__all__ = ["AUDITED_METHOD", "UNAUDITED_METHOD", "AuditBenchReport", "run_audit_bench"]

_PRINCIPAL = Principal(uid=1000, gid=1000, pid=4242, user="bench")
_ORIGIN = "engram.local/bench"

# ``policy.privacy`` without parameters reports the mode from memory; it is audited and not a
# read, so its entry is durable before the answer. (``plugins.list`` probed every plugin's health,
# a few ms each, which capped the row at the probes' rate.)
AUDITED_METHOD = "policy.privacy"
# The same daemon's request path without an audit entry: what the audited row adds to it is the
# audit log's cost (policy.privacy's own work, a dict from memory, is a few microseconds).
UNAUDITED_METHOD = "system.ping"
_AUDITED_RESULT = {"privacy_mode": False, "source": "default", "override": None, "config": False, "policy": False}


def _request(method: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode() + b"\n"


async def _client(path: Path, request: bytes, count: int, latencies: list[float], errors: list[int], audited: bool) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            line = await reader.readline()
            latencies.append(time.perf_counter() - started)
            if b'"result"' not in line or (audited and b'"audit_seq"' not in line):
                errors[0] += 1
    finally:
        writer.close()


async def _load(path: Path, target: str, method: str, concurrency: int, total: int, audited: bool) -> Measurement:
    per_client = max(total // concurrency, 1)
    request = _request(method)
    await _client(path, request, min(50, per_client), [], [0], audited)  # warm up
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    await asyncio.gather(*(_client(path, request, per_client, latencies, errors, audited) for _ in range(concurrency)))
    return measure(target, concurrency, latencies, time.perf_counter() - started, errors[0])


async def _mean_batch(path: Path) -> float | None:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=16 << 20)
    try:
        writer.write(_request("system.metrics"))
        response = json.loads(await reader.readline())
    finally:
        writer.close()
    for family in response.get("result", {}).get("families", []):
        if family["name"] == "engram_audit_batch_entries":
            samples = {s["name"]: s["value"] for s in family["samples"]}
            count = samples.get("engram_audit_batch_entries_count", 0)
            return samples.get("engram_audit_batch_entries_sum", 0) / count if count else None
    return None


def _record(i: int) -> Any:
    return request_record(
        method=AUDITED_METHOD, principal=_PRINCIPAL, request=i, params={}, result=_AUDITED_RESULT, connection=1
    )


def _new_store(folder: Path) -> AuditStore:
    db = folder / "engram.db"

    async def migrate() -> None:
        async with Database(db):
            pass

    anyio.run(migrate)
    return AuditStore(db).open()


def _bare_appends(folder: Path, total: int, batch: int) -> Measurement:
    store = _new_store(folder)
    try:
        records = [_record(i) for i in range(total)]
        latencies: list[float] = []
        started = time.perf_counter()
        for start in range(0, total, batch):
            t = time.perf_counter()
            store.append(records[start : start + batch])
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    # Throughput counts entries; latency is per append call (one transaction).
    m = measure(f"bare batch={batch}", 1, latencies, elapsed)
    return Measurement(m.target, 1, total, elapsed, m.p50_ms, m.p99_ms)


def build_log(folder: Path, total: int, checkpoint_every: int, progress: Callable[[int], None]) -> Verifier:
    """A log of ``total`` rpc entries with a checkpoint every ``checkpoint_every`` entries,
    written by the daemon's own store code; returns the verifier key that signed it."""
    skey, vkey = generate_signer(_ORIGIN)
    signer = Signer(skey)
    store = _new_store(folder)
    try:
        store.meta_setdefault("install_id", "bench")
        step = min(10_000, checkpoint_every)
        done = 0
        while done < total:
            count = min(step, total - done)
            store.append([_record(done + i) for i in range(count)])
            done += count
            if done % checkpoint_every == 0 or done == total:
                signed = sign_checkpoint(_ORIGIN, done, store.tree.root(), signer)
                store.add_checkpoint(done, signed.checkpoint.root, signed.note, signed.key_id, signed.time)
            progress(done)
    finally:
        store.close()
    return Verifier(vkey)


def _proofs(folder: Path, count: int) -> tuple[list[Measurement], int]:
    store = AuditStore(folder / "engram.db", readonly=True).open()
    try:
        size = store.size
        with store.snapshot():
            memory = MerkleTree.from_leaf_hashes(store.iter_leaf_hashes())
        rng = random.Random(9162)
        seqs = [rng.randrange(size) for _ in range(count)]
        olds = [rng.randint(1, size) for _ in range(count)]
        root = store.root(size)
        gen, check, mem_gen = [], [], []
        cgen, ccheck, mem_cgen = [], [], []
        for seq, old in zip(seqs, olds, strict=True):
            t = time.perf_counter()
            proof = store.inclusion_proof(seq, size)
            leaf = store.entry(seq)[1]  # type: ignore[index]
            gen.append(time.perf_counter() - t)
            t = time.perf_counter()
            verify_inclusion(leaf, seq, size, proof, root)
            check.append(time.perf_counter() - t)
            t = time.perf_counter()
            memory.inclusion_proof(seq, size)
            mem_gen.append(time.perf_counter() - t)
            t = time.perf_counter()
            cproof = store.consistency_proof(old, size)
            old_root = store.root(old)
            cgen.append(time.perf_counter() - t)
            t = time.perf_counter()
            verify_consistency(old, size, cproof, old_root, root)
            ccheck.append(time.perf_counter() - t)
            t = time.perf_counter()
            memory.consistency_proof(old, size)
            mem_cgen.append(time.perf_counter() - t)
    finally:
        store.close()
    rows = [
        measure("inclusion: generate (sqlite)", 1, gen, sum(gen)),
        measure("inclusion: generate (memory)", 1, mem_gen, sum(mem_gen)),
        measure("inclusion: verify", 1, check, sum(check)),
        measure("consistency: generate (sqlite)", 1, cgen, sum(cgen)),
        measure("consistency: generate (memory)", 1, mem_cgen, sum(mem_cgen)),
        measure("consistency: verify", 1, ccheck, sum(ccheck)),
    ]
    return rows, size


def _verify(folder: Path, key: Verifier, progress: Callable[[int], None]) -> tuple[float, float, int]:
    store = AuditStore(folder / "engram.db", readonly=True).open()
    try:
        with store.snapshot():
            started = time.perf_counter()
            report = verify_log(StateFolderSource(store, _ORIGIN), [key], progress=progress)
            full = time.perf_counter() - started
            started = time.perf_counter()
            root_of(leaf_hash(bytes(data)) for _, data, _ in store.iter_entries())
            bare = time.perf_counter() - started
    finally:
        store.close()
    return full, bare, report.checkpoints


@dataclass
class AuditBenchReport:
    appends: list[Measurement] = field(default_factory=list)
    mean_batch: float | None = None
    proofs: list[Measurement] = field(default_factory=list)
    log_size: int = 0
    checkpoints: int = 0
    verify_seconds: float = 0.0
    root_seconds: float = 0.0
    build_seconds: float = 0.0

    def _row(self, target: str) -> Measurement:
        return next(m for m in self.appends if m.target == target)

    def audit_cost(self) -> dict[str, Any]:
        """The audited row against the unaudited one, both through the same daemon."""
        audited, unaudited = self._row("engramd audited"), self._row("engramd ping (no audit)")
        return {
            "audited_method": AUDITED_METHOD,
            "unaudited_method": UNAUDITED_METHOD,
            "throughput_ratio": round(audited.throughput / unaudited.throughput, 3) if unaudited.throughput else None,
            "p50_added_ms": round(audited.p50_ms - unaudited.p50_ms, 3),
            "p99_added_ms": round(audited.p99_ms - unaudited.p99_ms, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        daemon = self._row("engramd audited")
        bare = [m for m in self.appends if m.target.startswith("bare")]
        return {
            "benchmark": "audit",
            "audited_method": AUDITED_METHOD,
            "append": [m.as_dict() for m in self.appends],
            "audit_cost": self.audit_cost(),
            "append_ratios": {
                m.target: round(daemon.throughput / m.throughput, 3) if m.throughput else None for m in bare
            },
            "daemon_mean_batch": round(self.mean_batch, 2) if self.mean_batch else None,
            "proofs": [{**m.as_dict(), "mean_us": round(m.seconds / m.requests * 1e6, 2)} for m in self.proofs],
            "verify": {
                "entries": self.log_size,
                "checkpoints": self.checkpoints,
                "seconds": round(self.verify_seconds, 3),
                "entries_per_s": round(self.log_size / self.verify_seconds) if self.verify_seconds else None,
                "baseline_root_seconds": round(self.root_seconds, 3),
                "ratio": round(self.verify_seconds / self.root_seconds, 3) if self.root_seconds else None,
                "build_seconds": round(self.build_seconds, 3),
            },
        }

    def table(self) -> str:
        lines = [
            "append (entries through the daemon's group commit vs the same store code in-process;"
            f" the audited requests call {AUDITED_METHOD})"
        ]
        lines.append(f"  {'target':<26} {'clients':>7} {'entries/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for m in self.appends:
            lines.append(
                f"  {m.target:<26} {m.concurrency:>7} {m.throughput:>11.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {m.errors:>6}"
            )
        daemon = self._row("engramd audited")
        cost = self.audit_cost()
        if cost["throughput_ratio"] is not None:
            lines.append(
                f"  ratio engramd audited ({AUDITED_METHOD}) / unaudited ({UNAUDITED_METHOD}): {cost['throughput_ratio']:.2f}x,"
                f" p50 +{cost['p50_added_ms']:.3f} ms, p99 +{cost['p99_added_ms']:.3f} ms"
            )
        for m in self.appends:
            if m.target.startswith("bare") and m.throughput:
                lines.append(f"  ratio engramd / {m.target}: {daemon.throughput / m.throughput:.2f}x")
        if self.mean_batch:
            lines.append(f"  mean group-commit batch in the daemon: {self.mean_batch:.1f} entries")
        lines.append("  (bare latency is per append call = one transaction; ping rows are not audited)")
        lines.append(f"proofs on a {self.log_size}-entry log ({self.proofs[0].requests if self.proofs else 0} each)")
        lines.append(f"  {'operation':<32} {'mean us':>9} {'p50 us':>9} {'p99 us':>9}")
        for m in self.proofs:
            lines.append(
                f"  {m.target:<32} {m.seconds / m.requests * 1e6:>9.1f} {m.p50_ms * 1000:>9.1f} {m.p99_ms * 1000:>9.1f}"
            )
        lines.append(f"offline verification of a {self.log_size}-entry log with {self.checkpoints} checkpoints")
        rate = self.log_size / self.verify_seconds if self.verify_seconds else 0
        lines.append(f"  engram audit verify   {self.verify_seconds:>8.2f} s  ({rate:,.0f} entries/s)")
        lines.append(f"  bare root recompute   {self.root_seconds:>8.2f} s")
        if self.root_seconds:
            lines.append(f"  ratio verify / bare   {self.verify_seconds / self.root_seconds:>8.2f}x")
        lines.append(f"  (building the log took {self.build_seconds:.1f} s)")
        return "\n".join(lines)


def run_audit_bench(
    entries: int,
    concurrency: int,
    verify_entries: int,
    proofs: int,
    socket_path: Path | None = None,
    progress: bool = True,
) -> AuditBenchReport:
    from rich.console import Console
    from rich.progress import Progress

    from engram.config import LogSettings
    from engram.observability.logging import configure_logging

    configure_logging(LogSettings(level="warning"))  # stdout is the report (--json); logs go to stderr
    report = AuditBenchReport()
    batch = AuditSettings().max_batch
    with ExitStack() as stack, Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("audit: daemon appends", total=None)
        sock = socket_path or stack.enter_context(temporary_daemon())
        report.appends.append(asyncio.run(_load(sock, "engramd audited", AUDITED_METHOD, concurrency, entries, True)))
        report.appends.append(asyncio.run(_load(sock, "engramd ping (no audit)", UNAUDITED_METHOD, concurrency, entries, False)))
        report.mean_batch = asyncio.run(_mean_batch(sock))
        bar.update(task, description="audit: bare appends")
        with tempfile.TemporaryDirectory(prefix="engram-audit-bench-") as tmp:
            single = Path(tmp) / "single"
            grouped = Path(tmp) / "grouped"
            single.mkdir()
            grouped.mkdir()
            report.appends.append(_bare_appends(single, min(entries, 5000), 1))
            report.appends.append(_bare_appends(grouped, entries, batch))
        with tempfile.TemporaryDirectory(prefix="engram-audit-bench-") as tmp:
            folder = Path(tmp)
            bar.update(task, description=f"audit: building a {verify_entries}-entry log", total=verify_entries, completed=0)
            started = time.perf_counter()
            key = build_log(folder, verify_entries, AuditSettings().checkpoint_every_entries, lambda d: bar.update(task, completed=d))
            report.build_seconds = time.perf_counter() - started
            bar.update(task, description="audit: proofs", total=None)
            report.proofs, report.log_size = _proofs(folder, proofs)
            bar.update(task, description="audit: verify", total=verify_entries, completed=0)
            report.verify_seconds, report.root_seconds, report.checkpoints = _verify(
                folder, key, lambda d: bar.update(task, completed=d)
            )
    return report
