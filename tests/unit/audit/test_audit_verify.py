"""engram.audit.verify: every kind of tampering is caught and named, in a state folder and an export."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from audit_helpers import ORIGIN, Log, record  # type: ignore[import-not-found]
from engram.audit.checkpoints import sign_checkpoint
from engram.audit.export import (
    ExportHeader,
    ExportSource,
    StateFolderSource,
    write_export,
)
from engram.audit.verify import VerificationError, VerifyReport, verify_log
from engram.signing import Signer, Verifier, generate_signer


def verify_state(log: Log, keys: list[Verifier] | None = None, **kwargs) -> VerifyReport:
    with log.store() as store, store.snapshot():
        return verify_log(StateFolderSource(store, ORIGIN), keys or [log.verifier], **kwargs)


def export_bytes(log: Log) -> bytes:
    out = io.BytesIO()
    with log.store() as store, store.snapshot():
        checkpoints = store.checkpoints()
        header = ExportHeader(ORIGIN, store.size, len(checkpoints))
        write_export(out, header, [(log.verifier.key_string(), True)], checkpoints, store.iter_entries())
    return out.getvalue()


def verify_export(path: Path, keys: list[Verifier]) -> VerifyReport:
    with ExportSource(path) as source:
        return verify_log(source, keys)


def fails(log: Log, where: str, keys: list[Verifier] | None = None, **kwargs) -> str:
    with pytest.raises(VerificationError) as info:
        verify_state(log, keys, **kwargs)
    assert info.value.where.startswith(where), str(info.value)
    return info.value.why


def sql(log: Log, statement: str, *args: object) -> None:
    conn = sqlite3.connect(log.db)
    conn.execute(statement, args)
    conn.commit()
    conn.close()


def test_an_intact_log_verifies(make_log) -> None:
    log = make_log(23, 5)
    report = verify_state(log)
    assert report.entries == 23 and report.checkpoints == 5 and report.unsigned_tail == 0
    assert report.last_checkpoint_size == 23 and report.tree_state_checked and report.nodes_checked > 0
    assert report.keys == [log.verifier.key_string()]


# --- a state folder -------------------------------------------------------------------------------


def test_every_changed_byte_of_an_entry_is_named(make_log) -> None:
    log = make_log(12, 4)
    conn = sqlite3.connect(log.db)
    original = conn.execute("SELECT entry FROM audit_entries WHERE seq = 6").fetchone()[0]
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] ^= 0x01
        conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = 6", (bytes(changed),))
        conn.commit()
        assert "stored leaf hash" in fails(log, "entry 6")
    conn.close()


def test_changed_entry_with_a_matching_leaf_hash_fails_its_checkpoint(make_log) -> None:
    from engram.audit.merkle import leaf_hash

    log = make_log(12, 4)
    conn = sqlite3.connect(log.db)
    data = conn.execute("SELECT entry FROM audit_entries WHERE seq = 4").fetchone()[0].replace(b"plugins.list", b"plugins.lost")
    conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 4", (data, leaf_hash(data)))
    conn.commit()
    conn.close()
    assert "entries 4..7" in fails(log, "checkpoint 1 (size 8")


def test_every_changed_character_of_a_checkpoint_is_named(make_log) -> None:
    log = make_log(8, 4)
    conn = sqlite3.connect(log.db)
    note = conn.execute("SELECT note FROM audit_checkpoints WHERE size = 4").fetchone()[0]
    for position in range(len(note)):
        swapped = "x" if note[position] != "x" else "y"
        conn.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 4", (note[:position] + swapped + note[position + 1 :],))
        conn.commit()
        fails(log, "checkpoint 0 (size 4")
    conn.close()


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("size", 3, "stored size"),
        ("root", b"\x00" * 32, "stored root"),
        ("key_id", "00000000", "stored key id"),
        ("time", "2000-01-01T00:00:00.000000Z", "stored time"),
    ],
)
def test_checkpoint_columns_must_agree_with_the_note(make_log, column: str, value: object, why: str) -> None:
    log = make_log(8, 4)
    sql(log, f"UPDATE audit_checkpoints SET {column} = ? WHERE id = 2", value)
    assert why in fails(log, "checkpoint 1")


def test_removed_entry(make_log) -> None:
    log = make_log(12, 4)
    sql(log, "DELETE FROM audit_entries WHERE seq = 5")
    assert "missing" in fails(log, "entry 5")


def test_reordered_entries(make_log) -> None:
    log = make_log(12, 4)
    conn = sqlite3.connect(log.db)
    rows = {s: (e, h) for s, e, h in conn.execute("SELECT seq, entry, leaf_hash FROM audit_entries WHERE seq IN (3, 9)")}
    conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 3", rows[9])
    conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 9", rows[3])
    conn.commit()
    conn.close()
    assert "reordered" in fails(log, "entry 3")


def test_truncated_log(make_log) -> None:
    log = make_log(12, 4)
    sql(log, "DELETE FROM audit_entries WHERE seq >= 10")
    assert "truncated" in fails(log, "checkpoint 2 (size 12")


def test_truncated_log_without_its_checkpoints(make_log) -> None:
    log = make_log(12, 4)
    sql(log, "DELETE FROM audit_entries WHERE seq >= 10")
    sql(log, "DELETE FROM audit_checkpoints WHERE size > 8")
    assert "frontier" in fails(log, "tree state")  # the stored state still says 12 entries


def test_truncation_is_caught_by_a_checkpoint_kept_elsewhere(make_log) -> None:
    log = make_log(12, 4)
    with log.store() as store:
        kept = store.last_checkpoint().note  # type: ignore[union-attr]
    sql(log, "DELETE FROM audit_entries WHERE seq >= 8")
    sql(log, "DELETE FROM audit_checkpoints WHERE size > 8")
    sql(log, "DELETE FROM audit_tree")
    sql(log, "DELETE FROM audit_nodes")
    with log.store() as store, store.snapshot():
        source = StateFolderSource(store, ORIGIN)
        source.tree_state = lambda: None  # type: ignore[method-assign]
        source.has_nodes = lambda: False  # type: ignore[method-assign]
        verify_log(source, [log.verifier])  # the remaining 8 entries are consistent by themselves
        with pytest.raises(VerificationError, match="given checkpoint 0.*truncated"):
            verify_log(source, [log.verifier], extra_checkpoints=[kept])


def test_checkpoint_signed_by_another_key(make_log) -> None:
    log = make_log(12, 4)
    other = Signer(generate_signer(ORIGIN)[0])
    with log.store() as store:
        cp = store.checkpoints()[1]
    forged = sign_checkpoint(ORIGIN, cp.size, cp.root, other)
    sql(log, "UPDATE audit_checkpoints SET note = ?, key_id = ?, time = ? WHERE id = ?", forged.note, forged.key_id, forged.time, cp.id)
    assert "no valid signature by a trusted key" in fails(log, "checkpoint 1 (size 8")
    assert verify_state(log, [log.verifier, other.verifier()]).checkpoints == 3  # trusted: fine


def test_checkpoint_of_another_log(make_log) -> None:
    log = make_log(8, 4)
    with log.store() as store:
        cp = store.checkpoints()[1]
    forged = sign_checkpoint("engram.local/other", cp.size, cp.root, log.signer)
    sql(log, "UPDATE audit_checkpoints SET note = ? WHERE id = ?", forged.note, cp.id)
    assert "from log 'engram.local/other'" in fails(log, "checkpoint 1")


def test_shrinking_checkpoints(make_log) -> None:
    log = make_log(8, 4)
    with log.store() as store:
        root = store.root(4)
    late = sign_checkpoint(ORIGIN, 4, root, log.signer)
    sql(log, "INSERT INTO audit_checkpoints (size, root, note, key_id, time) VALUES (4, ?, ?, ?, ?)", root, late.note, late.key_id, late.time)
    assert "shrank" in fails(log, "checkpoint 2 (size 4")


def test_tampered_tree_state_and_nodes(make_log) -> None:
    log = make_log(12, 4)
    sql(log, "UPDATE audit_nodes SET hash = ? WHERE level = 2 AND idx = 1", b"\x07" * 32)
    assert "children" in fails(log, "tree node (level 2, index 1)")
    log = make_log(12, 4)
    sql(log, "INSERT INTO audit_nodes VALUES (1, 99, ?)", b"\x07" * 32)
    assert "beyond" in fails(log, "tree node (level 1, index 99)")
    log = make_log(12, 4)
    conn = sqlite3.connect(log.db)
    frontier = conn.execute("SELECT frontier FROM audit_tree").fetchone()[0]
    conn.execute("UPDATE audit_tree SET frontier = ?", (frontier[:8] + bytes(32) + frontier[40:],))
    conn.commit()
    conn.close()
    assert "frontier" in fails(log, "tree state")


def test_no_checkpoint_at_all(make_log) -> None:
    log = make_log(8, 4)
    sql(log, "DELETE FROM audit_checkpoints")
    assert "no signed checkpoint" in fails(log, "log")
    assert verify_state(log, require_checkpoint=False).entries == 8  # what the daemon's start accepts


def test_unsigned_tail_is_reported(make_log) -> None:
    log = make_log(8, 4)
    with log.store(readonly=False) as store:
        store.append([record(8), record(9)])
    assert verify_state(log).unsigned_tail == 2


# --- key rotation ----------------------------------------------------------------------------------


def _rotated_log(make_log) -> tuple[Log, Signer]:
    """8 entries signed by the first key, a rotation checkpoint, 4 more signed by the new key."""
    log = make_log(8, 4)
    new = Signer(generate_signer(ORIGIN)[0])
    with log.store(readonly=False) as store:
        rotation = sign_checkpoint(ORIGIN, 8, store.tree.root(), new, previous=log.signer)
        store.add_checkpoint(8, store.tree.root(), rotation.note, rotation.key_id, rotation.time)
        store.append([record(8 + i) for i in range(4)])
        after = sign_checkpoint(ORIGIN, 12, store.tree.root(), new)
        store.add_checkpoint(12, store.tree.root(), after.note, after.key_id, after.time)
    return log, new


def test_rotation_keeps_old_checkpoints_verifiable_from_either_key(make_log) -> None:
    log, new = _rotated_log(make_log)
    for keys in ([log.verifier], [new.verifier()], [log.verifier, new.verifier()]):
        report = verify_state(log, keys)
        assert report.checkpoints == 4
        assert set(report.keys) == {log.verifier.key_string(), new.verifier().key_string()}


def test_a_retired_key_cannot_sign_later_checkpoints(make_log) -> None:
    log, new = _rotated_log(make_log)
    with log.store(readonly=False) as store:
        stale = sign_checkpoint(ORIGIN, 12, store.tree.root(), log.signer)  # the old key, after the rotation
        store.add_checkpoint(12, store.tree.root(), stale.note, stale.key_id, stale.time)
    assert "no valid signature by a trusted key" in fails(log, "checkpoint 4", [new.verifier()])


def test_a_rotation_needs_both_signatures(make_log) -> None:
    log, _ = _rotated_log(make_log)
    with log.store() as store:
        cp = store.checkpoints()[2]
    text = cp.note[: cp.note.rfind("\n\n") + 2]
    first_line_only = text + cp.note[len(text) :].split("\n")[0] + "\n"
    sql(log, "UPDATE audit_checkpoints SET note = ? WHERE id = ?", first_line_only, cp.id)
    assert "key rotation not signed" in fails(log, "checkpoint 2", [log.verifier])


def test_a_forged_rotation_by_a_retired_key_is_refused(make_log) -> None:
    log, new = _rotated_log(make_log)
    attacker = Signer(generate_signer(ORIGIN)[0])
    with log.store(readonly=False) as store:
        forged = sign_checkpoint(ORIGIN, 12, store.tree.root(), attacker, previous=log.signer)
        store.add_checkpoint(12, store.tree.root(), forged.note, forged.key_id, forged.time)
    assert "no valid signature by a trusted key" in fails(log, "checkpoint 4", [new.verifier()])


# --- an export ---------------------------------------------------------------------------------------


def test_export_round_trip(make_log, tmp_path: Path) -> None:
    log = make_log(10, 4)
    path = tmp_path / "log.jsonl"
    path.write_bytes(export_bytes(log))
    report = verify_export(path, [log.verifier])
    assert report.entries == 10 and report.checkpoints == 3 and not report.tree_state_checked


def test_every_changed_byte_of_an_export_is_caught(make_log, tmp_path: Path) -> None:
    log = make_log(5, 3)
    data = export_bytes(log)
    path = tmp_path / "tampered.jsonl"
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= 0x01
        path.write_bytes(bytes(changed))
        with pytest.raises(VerificationError):
            verify_export(path, [log.verifier])


def _lines(log: Log) -> list[bytes]:
    return export_bytes(log).splitlines(keepends=True)


def test_export_removed_reordered_truncated(make_log, tmp_path: Path) -> None:
    log = make_log(10, 4)
    lines = _lines(log)
    first_entry = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"entry"'))
    path = tmp_path / "x.jsonl"
    cases = {
        "entry 3": lines[: first_entry + 3] + lines[first_entry + 4 :],  # removed
        "entry 2": lines[: first_entry + 2] + [lines[first_entry + 5]] + lines[first_entry + 3 : first_entry + 5]
        + [lines[first_entry + 2]] + lines[first_entry + 6 :],  # reordered
        "checkpoint 2 (size 10": lines[:-2],  # truncated at a line boundary
        "export line": lines[:-1] + [lines[-1][:-20]],  # cut mid-line
    }
    for where, content in cases.items():
        path.write_bytes(b"".join(content))
        with pytest.raises(VerificationError) as info:
            verify_export(path, [log.verifier])
        assert info.value.where.startswith(where) or "cut off" in info.value.why, (where, str(info.value))


def test_export_with_swapped_seq_fields_is_caught(make_log, tmp_path: Path) -> None:
    log = make_log(6, 3)
    lines = _lines(log)
    first = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"entry"'))
    lines[first + 1], lines[first + 2] = (
        lines[first + 2].replace(b'"seq":2,"leaf', b'"seq":1,"leaf'),
        lines[first + 1].replace(b'"seq":1,"leaf', b'"seq":2,"leaf'),
    )
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match="entry 1: its bytes say seq 2"):
        verify_export(path, [log.verifier])


# --- aligned chunks and the verified mark -------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4 entries, so that small logs cross many chunk boundaries (the real ones hold 4096)."""
    import engram.audit.verify as verify

    monkeypatch.setattr(verify, "_CHUNK_LEVEL", 2)
    monkeypatch.setattr(verify, "_CHUNK", 4)


def test_chunks_verify_every_node_and_name_failures(make_log, small_chunks) -> None:
    log = make_log(23, 5)
    report = verify_state(log)
    assert report.entries == 23 and report.nodes_checked == sum(23 >> level for level in range(1, 5))
    sql(log, "UPDATE audit_nodes SET hash = ? WHERE level = 3 AND idx = 1", b"\x07" * 32)  # above a chunk
    assert "children" in fails(log, "tree node (level 3, index 1)")
    log = make_log(23, 5)
    sql(log, "DELETE FROM audit_nodes WHERE level = 1 AND idx = 9")
    assert "missing" in fails(log, "tree node (level 1, index 9)")
    log = make_log(23, 5)
    sql(log, "DELETE FROM audit_entries WHERE seq = 13")
    assert "missing" in fails(log, "entry 13")


def test_a_bad_entry_after_a_good_checkpoint_in_one_chunk_is_named_after_it(make_log, small_chunks) -> None:
    log = make_log(12, 3)  # checkpoints at 3, 6, 9, 12: two of them inside one chunk of 4
    sql(log, "UPDATE audit_checkpoints SET note = note || 'x' WHERE size = 9")
    fails(log, "checkpoint 2 (size 9")
    log = make_log(12, 3)
    sql(log, "DELETE FROM audit_entries WHERE seq = 7")
    assert "missing" in fails(log, "entry 7")


def _tree_at(log: Log, size: int):
    from engram.audit.merkle import CompactTree, leaf_hash

    with log.store() as store:
        return CompactTree.from_leaf_hashes(leaf_hash(data) for _, data, _ in store.iter_entries(0, size))


@pytest.mark.parametrize("chunk_level", [12, 2])
def test_since_a_verified_mark_only_what_follows_is_read(make_log, monkeypatch, chunk_level: int) -> None:
    import engram.audit.verify as verify

    monkeypatch.setattr(verify, "_CHUNK_LEVEL", chunk_level)
    monkeypatch.setattr(verify, "_CHUNK", 1 << chunk_level)
    log = make_log(23, 5)
    full = verify_state(log)
    assert full.verified_from == 0 and full.mark == _tree_at(log, 23)
    mark = _tree_at(log, 10)
    # Entry 3 changed, before the mark at 10: only a run without the mark sees it.
    sql(log, "UPDATE audit_entries SET entry = CAST(entry || ' ' AS BLOB) WHERE seq = 3")
    read: list[int] = []
    with log.store() as store, store.snapshot():
        source = StateFolderSource(store, ORIGIN)
        entries = source.iter_entries
        source.iter_entries = lambda start=0: (  # type: ignore[method-assign]
            read.append(row[0]) or row for row in entries(start)
        )
        report = verify_log(source, [log.verifier], since=mark)
    assert report.verified_from == 10 and read == list(range(10, 23)) and report.mark == full.mark
    assert report.nodes_checked == sum((23 >> level) - (10 >> level) for level in range(1, 5))
    assert "stored leaf hash" in fails(log, "entry 3")
    # After the mark everything is checked as ever.
    sql(log, "UPDATE audit_entries SET entry = CAST(entry || ' ' AS BLOB) WHERE seq = 17")
    with pytest.raises(VerificationError, match="entry 17"):
        verify_state(log, since=mark)


def test_a_mark_no_checkpoint_signs_is_ignored(make_log) -> None:
    log = make_log(23, 5)
    unsigned = _tree_at(log, 12)  # no checkpoint at 12
    assert verify_state(log, since=unsigned).verified_from == 0
    from engram.audit.merkle import CompactTree

    forged = CompactTree(10, [b"\x07" * 32, b"\x07" * 32])  # size 10 is signed, this root is not
    assert verify_state(log, since=forged).verified_from == 0


def test_exports_across_small_chunks(make_log, tmp_path: Path, small_chunks) -> None:
    test_export_round_trip(make_log, tmp_path)
    test_export_removed_reordered_truncated(make_log, tmp_path)
    test_export_with_swapped_seq_fields_is_caught(make_log, tmp_path)
    test_reordered_entries(make_log)
    test_truncated_log(make_log)
    test_unsigned_tail_is_reported(make_log)


def test_seq_is_read_from_the_entry_itself_whatever_its_members_hold(make_log) -> None:
    from engram.audit.entry import Record

    log = make_log(4, 4)
    odd = [
        Record(kind="x.nested", detail={"inner": {"seq": 99, "task_id": 1, "time": "t", "v": 1}}),
        Record(kind="x.text", detail={"note": ',"seq":99,"task_id":1,"time":"t","v":1}'}),
        Record(kind="x.task", task_id="not a number"),
        Record(kind="x.float", task_id=1.5),
    ]
    with log.store(readonly=False) as store:
        store.append(odd)
        signed = sign_checkpoint(ORIGIN, 8, store.tree.root(), log.signer)
        store.add_checkpoint(8, signed.checkpoint.root, signed.note, signed.key_id, signed.time)
    assert verify_state(log).entries == 8
    conn = sqlite3.connect(log.db)
    rows = {s: (e, h) for s, e, h in conn.execute("SELECT seq, entry, leaf_hash FROM audit_entries WHERE seq IN (5, 6)")}
    conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 5", rows[6])
    conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 6", rows[5])
    conn.commit()
    conn.close()
    assert "its bytes say seq 6" in fails(log, "entry 5")
