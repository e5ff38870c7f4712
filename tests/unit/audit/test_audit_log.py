"""The AuditLog part in-process: group commit, backpressure, bus events, checkpoints, keys, start-up check."""

from __future__ import annotations

import base64
import itertools
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from audit_helpers import migrate  # type: ignore[import-not-found]
from engram.audit.canonical import content_hash
from engram.audit.events import AUDIT_EVENTS
from engram.audit.export import StateFolderSource
from engram.audit.log import AuditLog
from engram.audit.merkle import CompactTree
from engram.audit.settings import AuditSettings
from engram.audit.store import AuditStore
from engram.audit.verify import verify_log
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS, Event, PluginLoaded
from engram.errors import Overloaded, StartupError, Unavailable
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.signing import Verifier, open_checkpoint

PRINCIPAL = Principal(uid=1000, gid=1000, pid=42, user="ada")


class MemoryDeleted(Event):
    topic = "memory.deleted"
    audit_hash_fields: ClassVar[tuple[str, ...]] = ("text",)
    audit_omit_fields: ClassVar[tuple[str, ...]] = ("vector",)
    text: str
    vector: list[float]
    memory_id: int
    task_id: int | None = None
    principal: Principal | None = None


class Decision(Event):
    topic = "policy.test_decision"
    effect: str
    audit: bool


class Chatter(Event):
    topic = "chatter.noise"  # not an audited topic
    n: int


class Folder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "engram.db"
        root.mkdir(exist_ok=True)
        if not self.db.exists():
            migrate(self.db)
        self.bus = EventBus((*CORE_EVENTS, *AUDIT_EVENTS, MemoryDeleted, Decision, Chatter))

    def log(self, **settings: Any) -> AuditLog:
        return AuditLog(AuditSettings(**settings), self.root, self.db, self.bus, Metrics())

    def entries(self) -> list[dict[str, Any]]:
        with AuditStore(self.db, readonly=True) as store:
            return [json.loads(data) for _, data, _ in store.iter_entries()]

    def verify(self, keys: list[Verifier]) -> Any:
        with AuditStore(self.db, readonly=True) as store, store.snapshot():
            return verify_log(StateFolderSource(store, None), keys)


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path / "state")


async def test_group_commit_gives_each_caller_its_durable_seq(folder: Folder) -> None:
    appended = folder.bus.subscribe(["audit.appended"], 10_000)
    seqs: list[int] = []
    async with folder.log(max_batch=16, max_batch_delay_ms=5) as audit:

        async def one(i: int) -> None:
            seqs.append(await audit.append("test.thing", PRINCIPAL, task_id=i, detail={"i": i}))

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
        assert sorted(seqs) == list(range(100))
        assert audit.counters.batches < 100  # grouped
        assert max(audit.counters.sizes) <= 16
    batches = []
    while (event := appended.receive_nowait()) is not None:
        batches.append(event)
    assert sum(e.count for e in batches) == 100
    entries = folder.entries()
    assert [e["seq"] for e in entries] == list(range(100))
    by_task = {e["task_id"]: e for e in entries}
    assert by_task[7]["detail"] == {"i": 7} and by_task[7]["principal"]["uid"] == 1000


async def test_full_queue_refuses_with_overloaded(folder: Folder) -> None:
    outcomes: list[Any] = []
    async with folder.log(queue_size=1, max_batch_delay_ms=0) as audit:

        async def one() -> None:
            try:
                outcomes.append(await audit.append("test.thing"))
            except Overloaded as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert refused and refused[0].reason == "audit_overloaded"
    assert any(isinstance(o, int) for o in outcomes)


async def test_request_records_hash_input_and_output(folder: Folder) -> None:
    from engram.errors import NotFound

    async with folder.log() as audit:
        ok = await audit.record_request(
            method="x.y", principal=PRINCIPAL, request=7, params={"a": [1, 2.5]}, result={"r": "é"}, connection=3
        )
        bad = await audit.record_request(
            method="x.y", principal=PRINCIPAL, request=8, params=None, error=NotFound("gone"), connection=3
        )
    entries = folder.entries()
    assert entries[ok]["input_hash"] == content_hash({"a": [1, 2.5]})
    assert entries[ok]["output_hash"] == content_hash({"r": "é"})
    assert entries[ok]["detail"] == {"method": "x.y", "outcome": "ok", "error_code": None, "error_reason": None, "connection": 3}
    assert entries[ok]["task_id"] == 7 and entries[ok]["kind"] == "rpc"
    assert entries[bad]["output_hash"] is None and entries[bad]["input_hash"] == content_hash({})
    assert entries[bad]["detail"]["error_code"] == -32002 and entries[bad]["detail"]["outcome"] == "error"


async def test_queued_reads_are_committed_with_the_next_batch_and_in_order(folder: Folder) -> None:
    async with folder.log(max_batch_delay_ms=50) as audit:
        for request in (1, 2):
            audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=request, params={}, result={"n": request})
        # A write behind them waits for its own durability; the reads are committed in the same batch.
        seq = await audit.record_request(method="x.write", principal=PRINCIPAL, request=3, params={}, result={})
        assert seq == 2 and audit.counters.batches == 1
    entries = folder.entries()
    assert [(e["task_id"], e["detail"]["method"]) for e in entries] == [(1, "x.read"), (2, "x.read"), (3, "x.write")]
    assert entries[0]["output_hash"] == content_hash({"n": 1})


async def test_queued_reads_gather_into_one_commit(folder: Folder) -> None:
    async with folder.log(read_commit_delay_ms=1000) as audit:
        for request in (1, 2, 3):
            audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=request, params={}, result={})
            await anyio.sleep(0.01)  # the writer runs between them: without gathering it commits each
        assert audit.size == 0
    assert audit.counters.batches == 1  # closing the log ended the window
    assert [e["task_id"] for e in folder.entries()] == [1, 2, 3]


async def test_an_entry_someone_waits_for_ends_the_gathering_of_reads(folder: Folder) -> None:
    # The write's caller would time out if it waited for the reads' window (1 s) to end.
    async with folder.log(read_commit_delay_ms=1000, append_timeout=0.5) as audit:
        audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=1, params={})
        await anyio.sleep(0.01)
        seq = await audit.record_request(method="x.write", principal=PRINCIPAL, request=2, params={}, result={})
        assert seq == 1 and audit.counters.batches == 1


async def test_a_full_queue_of_reads_is_committed_without_waiting_for_the_window(folder: Folder) -> None:
    async with folder.log(queue_size=2, read_commit_delay_ms=1000) as audit:
        for request in (1, 2):
            audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=request, params={})
        with anyio.fail_after(0.5):  # well inside the 1 s window
            while audit.size < 2:
                await anyio.sleep(0.01)
        audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=3, params={})  # room again


async def test_queued_reads_are_refused_when_full_or_stopped(folder: Folder) -> None:
    audit = folder.log(queue_size=1, max_batch_delay_ms=1000)
    with pytest.raises(Unavailable):
        audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=1, params={})
    async with audit:
        audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=1, params={})
        with pytest.raises(Overloaded):
            audit.enqueue_request(method="x.read", principal=PRINCIPAL, request=2, params={})
    assert [e["task_id"] for e in folder.entries()] == [1]  # what was queued is written at close


async def test_audited_bus_events_keep_hashes_not_content(folder: Folder) -> None:
    async with folder.log() as audit:
        folder.bus.publish(MemoryDeleted(text="my secret diary", vector=[0.5], memory_id=9, task_id=4, principal=PRINCIPAL))
        folder.bus.publish(Chatter(n=1))
        folder.bus.publish(Decision(effect="allow", audit=False))  # says it is routine: not recorded
        folder.bus.publish(Decision(effect="deny", audit=True))
        folder.bus.publish(PluginLoaded(name="p", version="1"))
        with anyio.fail_after(5):
            while audit.size < 3:
                await anyio.sleep(0.01)
    raw = (folder.root / "engram.db").read_bytes()
    assert b"my secret diary" not in raw
    entries = {e["kind"]: e for e in folder.entries()}
    assert set(entries) == {"memory.deleted", "plugin.loaded", "policy.test_decision"}
    assert entries["policy.test_decision"]["detail"] == {"effect": "deny"}
    deleted = entries["memory.deleted"]
    assert deleted["detail"] == {"memory_id": 9, "text_hash": content_hash("my secret diary")}
    assert deleted["task_id"] == 4 and deleted["principal"]["user"] == "ada"
    assert entries["plugin.loaded"]["detail"] == {"name": "p", "version": "1"}


async def test_lost_events_leave_a_gap_entry(folder: Folder) -> None:
    async with folder.log(event_queue=16) as audit:
        for i in range(40):  # no await in between: the audit subscription overflows
            folder.bus.publish(PluginLoaded(name=f"p{i}", version=None))
        with anyio.fail_after(5):
            while audit.counters.events_lost == 0 or audit.size < 17:
                await anyio.sleep(0.01)
    gaps = [e for e in folder.entries() if e["kind"] == "audit.gap"]
    assert gaps and sum(g["detail"]["lost"] for g in gaps) == 24


async def test_checkpoints_every_n_entries_and_at_close(folder: Folder) -> None:
    async with folder.log(checkpoint_every_entries=5, max_batch=1) as audit:
        for _ in range(12):
            await audit.append("test.thing")
        with anyio.fail_after(30):  # a bound on the background signer, not a speed: shared machines are slow
            while audit.last_checkpoint is None or audit.last_checkpoint.size < 10:
                await anyio.sleep(0.01)
        vkey = audit.keys.current
        origin = audit.origin
    with AuditStore(folder.db, readonly=True) as store:
        checkpoints = store.checkpoints()
    assert checkpoints[-1].size == 12  # signed at shutdown
    assert all(a.size < b.size for a, b in itertools.pairwise(checkpoints))
    cp, _ = open_checkpoint(checkpoints[-1].note, [vkey], origin)
    assert cp.size == 12
    assert folder.verify([vkey]).entries == 12


async def test_fresh_checkpoint_on_request(folder: Folder) -> None:
    async with folder.log(checkpoint_every_entries=1000) as audit:
        assert await audit.checkpoint() is None  # nothing to sign yet
        await audit.append("test.thing")
        first = await audit.checkpoint()
        assert first is not None and first.size == 1
        assert await audit.checkpoint() == first  # nothing new: no new checkpoint
        assert await audit.checkpoint(fresh=False) == first


async def test_key_files_and_modes(folder: Folder) -> None:
    async with folder.log() as audit:
        vkey = audit.keys.current.key_string()
    keys = folder.root / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "audit.key").stat().st_mode) == 0o600
    assert (keys / "audit.key").read_text().startswith("PRIVATE+KEY+engram.local/")
    assert (keys / "audit.pub").read_text().strip() == vkey
    os.chmod(keys / "audit.key", 0o644)
    with pytest.raises(StartupError, match="read or written by other users"):
        async with folder.log():
            pass


async def test_rotation_keeps_old_checkpoints_verifiable(folder: Folder) -> None:
    async with folder.log() as audit:
        await audit.append("test.thing")
        await audit.checkpoint()
        old = audit.keys.current
        old_vkey, new_vkey, cp = await audit.rotate_key()
        assert old_vkey == old.key_string() and new_vkey != old_vkey
        await audit.append("test.thing")
        assert [v.key_string() for v in audit.keys.previous] == [old_vkey]
    assert (folder.root / "keys" / f"audit-{old.key_id:08x}.pub").read_text().strip() == old_vkey
    assert (folder.root / "keys" / "audit.pub").read_text().strip() == new_vkey
    assert len(cp.note.split("\n\n")[1].splitlines()) == 2  # signed by both keys
    for keys in ([old], [Verifier(new_vkey)]):
        report = folder.verify(keys)
        assert report.checkpoints == 3 and len(report.keys) == 2
    kinds = [e["kind"] for e in folder.entries()]
    assert kinds == ["test.thing", "audit.key_rotated", "test.thing"]
    async with folder.log() as again:  # restarts fine on a rotated log
        assert again.keys.current.key_string() == new_vkey


async def test_start_refuses_a_tampered_log(folder: Folder) -> None:
    async with folder.log() as audit:
        for _ in range(6):
            await audit.append("test.thing", detail={"x": "y"})
    conn = sqlite3.connect(folder.db)
    data = conn.execute("SELECT entry FROM audit_entries WHERE seq = 3").fetchone()[0]
    conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = 3", (data.replace(b'"y"', b'"z"'),))
    conn.commit()
    conn.close()
    with pytest.raises(StartupError) as info:
        async with folder.log():
            pass
    message = str(info.value)
    assert "entry 3" in message and "engram audit verify" in message and "aside" in message


async def test_start_checks_only_what_is_new_since_its_verified_mark(folder: Folder, monkeypatch: pytest.MonkeyPatch) -> None:
    import engram.audit.log as audit_log
    from engram.audit.verify import VerificationError

    read: list[list[int]] = []
    real_verify = audit_log.verify_log

    def counting_verify(source: Any, *args: Any, **kwargs: Any) -> Any:
        seqs: list[int] = []
        entries = source.iter_entries
        source.iter_entries = lambda start=0: (seqs.append(row[0]) or row for row in entries(start))
        read.append(seqs)
        return real_verify(source, *args, **kwargs)

    monkeypatch.setattr(audit_log, "verify_log", counting_verify)
    async with folder.log() as audit:
        for _ in range(6):
            await audit.append("test.thing", detail={"x": "y"})
    async with folder.log() as audit:  # checks all 6, marks size 6 (the checkpoint at close)
        for _ in range(3):
            await audit.append("test.thing", detail={"x": "y"})
    conn = sqlite3.connect(folder.db)
    data = conn.execute("SELECT entry FROM audit_entries WHERE seq = 2").fetchone()[0]
    conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = 2", (data.replace(b'"y"', b'"z"'),))
    conn.commit()
    conn.close()
    async with folder.log():  # entry 2 lies before the mark: not read again at start
        pass
    assert read == [[], list(range(6)), list(range(6, 9))]
    with pytest.raises(VerificationError, match="entry 2"):  # the full check still sees it
        folder.verify([Verifier((folder.root / "keys" / "audit.pub").read_text().strip())])


async def test_start_checks_everything_when_its_mark_is_not_signed(folder: Folder) -> None:
    async with folder.log() as audit:
        for _ in range(6):
            await audit.append("test.thing", detail={"x": "y"})
    async with folder.log():
        pass
    conn = sqlite3.connect(folder.db)
    data = conn.execute("SELECT entry FROM audit_entries WHERE seq = 2").fetchone()[0]
    conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = 2", (data.replace(b'"y"', b'"z"'),))
    forged = CompactTree(6, [b"\x01" * 32, b"\x01" * 32])  # size 6 is signed, this root is not
    conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_verified'", (base64.b64encode(forged.to_bytes()).decode(),))
    conn.commit()
    conn.close()
    with pytest.raises(StartupError, match="entry 2"):
        async with folder.log():
            pass


async def test_start_refuses_a_checkpoint_ahead_of_the_log(folder: Folder) -> None:
    async with folder.log() as audit:
        for _ in range(6):
            await audit.append("test.thing")
    conn = sqlite3.connect(folder.db)
    conn.execute("DELETE FROM audit_entries WHERE seq >= 4")
    conn.commit()
    conn.close()
    with pytest.raises(StartupError, match="truncated"):
        async with folder.log():
            pass


async def test_start_refuses_a_lost_signing_key(folder: Folder) -> None:
    async with folder.log() as audit:
        await audit.append("test.thing")
    (folder.root / "keys" / "audit.key").unlink()
    with pytest.raises(StartupError, match="signing key .* is missing"):
        async with folder.log():
            pass


async def test_a_failed_write_fails_its_callers_and_the_log_recovers(folder: Folder) -> None:
    async with folder.log() as audit:
        await audit.append("test.thing")
        conn = sqlite3.connect(folder.db)
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        conn.commit()
        with pytest.raises(Unavailable) as info:
            await audit.append("test.thing")
        assert info.value.reason == "audit_failed"
        ok, detail = await audit.health()
        assert not ok and "disk on fire" in detail
        conn.execute("DROP TRIGGER boom")
        conn.commit()
        conn.close()
        assert await audit.append("test.thing") == 1
        assert (await audit.health())[0]
    with pytest.raises(Unavailable):
        await audit.append("test.thing")  # closed
