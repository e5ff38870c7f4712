"""engram.audit.store: one transaction per batch, proofs from SQLite, crashes, read-only opening."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from audit_helpers import record  # type: ignore[import-not-found]
from engram.audit.entry import parse_entry
from engram.audit.export import StateFolderSource
from engram.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from engram.audit.store import AuditStore, StoreError
from engram.audit.verify import verify_log


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 MTH, recursively, as the RFC writes it."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_append_assigns_seq_and_persists_tree(audit_db: Path) -> None:
    with AuditStore(audit_db) as store:
        assert store.append([record(0), record(1)]) == 0
        assert store.append([record(2)]) == 2
        assert store.append([]) == 3
        data, leaf = store.entry(1)  # type: ignore[misc]
        assert parse_entry(data)["seq"] == 1 and leaf == leaf_hash(data)
        root = store.tree.root()
    with AuditStore(audit_db) as again:
        assert again.size == 3 and again.tree.root() == root
        leaves = [leaf_hash(d) for _, d, _ in again.iter_entries()]
        assert root == _mth(leaves)
        assert again.append([record(3)]) == 3


def test_proofs_from_sqlite_for_every_size_up_to_64(audit_db: Path) -> None:
    with AuditStore(audit_db) as store:
        for batch in ([record(i)] for i in range(64)):  # one leaf per transaction: every node path
            store.append(batch)
        leaves = [leaf for _, _, leaf in store.entries(0, 64)]
        memory = MerkleTree.from_leaf_hashes(leaves)
        for size in range(1, 65):
            root = store.root(size)
            assert root == _mth(leaves[:size]) == memory.root(size)
            for index in range(size):
                proof = store.inclusion_proof(index, size)
                assert proof == memory.inclusion_proof(index, size)
                verify_inclusion(leaves[index], index, size, proof, root)
            for old in range(1, size + 1):
                proof = store.consistency_proof(old, size)
                assert proof == memory.consistency_proof(old, size)
                verify_consistency(old, size, proof, _mth(leaves[:old]), root)
        with pytest.raises(ValueError):
            store.inclusion_proof(0, 65)


def test_failure_inside_a_batch_leaves_nothing_behind(audit_db: Path) -> None:
    with AuditStore(audit_db) as store:
        store.append([record(i) for i in range(5)])
        before_root = store.tree.root()
        raw = sqlite3.connect(audit_db)
        raw.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON audit_nodes WHEN NEW.level = 3 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        raw.commit()
        with pytest.raises(sqlite3.DatabaseError, match="disk on fire"):
            store.append([record(i) for i in range(5, 9)])  # completes the level-3 node over 0..7
        assert store.size == 5 and store.tree.root() == before_root
        assert store.count_entries() == 5
        assert store.tree_state() == store.tree
        raw.execute("DROP TRIGGER boom")
        raw.commit()
        raw.close()
        assert store.append([record(i) for i in range(5, 9)]) == 5
        with store.snapshot():
            report = verify_log(StateFolderSource(store, None), [], require_checkpoint=False)
        assert report.entries == 9 and report.nodes_checked == 4 + 2 + 1


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engram.audit.checkpoints import sign_checkpoint
    from engram.signing import Signer
    from engram.audit.store import AuditStore
    sys.path.insert(0, sys.argv[3])
    from audit_helpers import record, ORIGIN
    store = AuditStore(Path(sys.argv[1])).open()
    signer = Signer(sys.argv[2])
    i = 0
    while True:
        first = store.append([record(i + k) for k in range(7)])
        i += 7
        print(first + 6, flush=True)  # acknowledged: COMMIT returned
        if i % 21 == 0:
            s = sign_checkpoint(ORIGIN, store.size, store.tree.root(), signer)
            store.add_checkpoint(store.size, s.checkpoint.root, s.note, s.key_id, s.time)
    """
)


def test_kill_9_during_batched_appends(audit_db: Path, tmp_path: Path) -> None:
    from engram.signing import Verifier, generate_signer

    skey, vkey = generate_signer("engram.local/test")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(audit_db), skey, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = []
    assert proc.stdout is not None
    while len(acknowledged) < 40:
        line = proc.stdout.readline()
        assert line, "writer died"
        acknowledged.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged += [int(x) for x in proc.stdout.read().split()]
    with AuditStore(audit_db, readonly=True) as store, store.snapshot():
        assert store.size > max(acknowledged)  # every acknowledged entry is there
        report = verify_log(StateFolderSource(store, "engram.local/test"), [Verifier(vkey)])
        assert report.entries == store.size
        assert all(cp.size <= store.size for cp in store.checkpoints())  # none ahead of the log


def _digest_folder(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_read_only_open_changes_nothing(make_log) -> None:
    log = make_log(30, 10)
    before = _digest_folder(log.folder)
    mtimes = {p.name: p.stat().st_mtime_ns for p in log.folder.iterdir()}
    time.sleep(0.01)
    with log.store() as store, store.snapshot():
        verify_log(StateFolderSource(store, None), [log.verifier])
    assert _digest_folder(log.folder) == before
    assert {p.name: p.stat().st_mtime_ns for p in log.folder.iterdir()} == mtimes
    with log.store() as store, pytest.raises(StoreError):
        store.append([record(0)])


def test_missing_tables_and_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        AuditStore(tmp_path / "nope.db", readonly=True).open()
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(StoreError, match="no audit log"):
        AuditStore(tmp_path / "empty.db", readonly=True).open()


def test_entries_are_canonical_json(audit_db: Path) -> None:
    from engram.audit.canonical import canonical_json

    with AuditStore(audit_db) as store:
        store.append([record(i) for i in range(6)])
        for _, data, _ in store.iter_entries():
            assert canonical_json(json.loads(data)) == data
