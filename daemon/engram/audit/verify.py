"""Verify a whole audit log with nothing but verifier keys: offline, from first entry to last.

Used by ``engram audit verify`` (on a state folder or an export) and by the daemon at start,
which refuses to extend a log that fails. What is checked, in log order, stopping at the first
failure, which is named (``entry 17: ...``, ``checkpoint 3 (size 1200): ...``):

1. every checkpoint note is well formed, comes from the log's origin, and carries a valid
   Ed25519 signature by a trusted key (see *Key rotation* below); the columns stored beside it
   (size, root, key id, time) say what the note says; sizes never shrink;
2. the entries are numbered 0, 1, 2, ... without gap; each one's stored leaf hash is
   ``SHA-256(0x00 || bytes)`` and its bytes are a JSON object whose ``seq`` is its position
   (so entries cannot be swapped);
3. the RFC 9162 root recomputed from the entries equals the signed root of every checkpoint at
   its size, so consecutive checkpoints are consistent: both are prefixes of one sequence of
   leaves (which is what a consistency proof between them demonstrates); a checkpoint larger
   than the log means the log was truncated;
4. checkpoints the caller brings from elsewhere (``--checkpoint``) match the log the same way;
5. for a state folder, the stored tree state (size + frontier) and every stored perfect-subtree
   node (what proofs are served from) agree with the recomputed tree.

Key rotation: a rotation checkpoint carries the extension line
``engram-key-rotation <old verifier key> <new verifier key>`` and is signed by both keys. Trust
flows along such a checkpoint when one of the two keys is already trusted at its position: a
trusted old key vouches for the new key from there on, a trusted new key vouches for the old one
up to there. So the current public key alone verifies a log that rotated keys, and a key that
was retired cannot sign anything later in the log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from engram.audit.checkpoints import (
    ROTATION_EXTENSION,
    checkpoint_time,
    note_key_id,
    parse_checkpoint_text,
)
from engram.audit.entry import parse_entry
from engram.audit.merkle import EMPTY_ROOT, LEAF_PREFIX, NODE_PREFIX, CompactTree, node_hash
from engram.audit.store import StoredCheckpoint
from engram.errors import DataError
from engram.signing import (
    Checkpoint,
    NoteError,
    Verifier,
    open_checkpoint,
    open_note,
)

__all__ = ["LogSource", "VerificationError", "VerifyReport", "verify_log"]

Progress = Callable[[int], None]
Entry = tuple[int, bytes, "bytes | None"]  # (seq, canonical bytes, stored leaf hash or None)

_BATCH = 4096  # entries (or nodes) checked per list pass: the per-entry Python overhead is the cost


class VerificationError(DataError):
    """The first thing that is wrong: ``where`` names the entry or checkpoint, ``why`` says what."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


class LogSource(Protocol):
    """What the verifier reads: a state folder's database or an export file."""

    origin: str | None  # the origin the source declares (checked against the checkpoints)

    def entry_count_hint(self) -> int: ...

    def checkpoints(self) -> list[StoredCheckpoint]: ...

    def iter_entries(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(seq, canonical bytes, stored leaf hash or None)`` in stored order."""
        ...

    def tree_state(self) -> CompactTree | None:
        """The stored size + frontier, or ``None`` where the source has none (exports)."""
        ...

    def has_nodes(self) -> bool: ...

    def iter_leaf_hashes(self) -> Iterator[bytes]: ...

    def iter_nodes(self, level: int) -> Iterator[tuple[int, bytes]]: ...

    def max_node_level(self) -> int: ...


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    origin: str | None = None
    last_checkpoint_size: int | None = None
    last_checkpoint_root: bytes | None = None
    keys: list[str] = field(default_factory=list)  # verifier keys that verified a checkpoint
    unsigned_tail: int = 0  # entries after the last checkpoint
    tree_state_checked: bool = False
    nodes_checked: int = 0

    def as_dict(self) -> dict:
        import base64

        return {
            "ok": True,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "origin": self.origin,
            "last_checkpoint_size": self.last_checkpoint_size,
            "last_checkpoint_root": base64.b64encode(self.last_checkpoint_root).decode()
            if self.last_checkpoint_root is not None
            else None,
            "keys": self.keys,
            "unsigned_tail": self.unsigned_tail,
            "tree_state_checked": self.tree_state_checked,
            "nodes_checked": self.nodes_checked,
        }


# --- checkpoint notes ------------------------------------------------------------------------


def _rotation(checkpoint: Checkpoint) -> tuple[Verifier, Verifier] | None:
    for line in checkpoint.extensions:
        if line.startswith(ROTATION_EXTENSION):
            parts = line[len(ROTATION_EXTENSION) :].split(" ")
            if len(parts) != 2:
                raise NoteError(f"malformed key rotation line {line!r}")
            return Verifier(parts[0]), Verifier(parts[1])
    return None


@dataclass
class _Parsed:
    position: int
    stored: StoredCheckpoint
    checkpoint: Checkpoint
    rotation: tuple[Verifier, Verifier] | None

    @property
    def label(self) -> str:
        return f"checkpoint {self.position} (size {self.stored.size}, signed {self.stored.time})"


def _parse_checkpoints(stored: Sequence[StoredCheckpoint], origin: str | None) -> tuple[list[_Parsed], str | None]:
    parsed: list[_Parsed] = []
    for position, row in enumerate(stored):
        label = f"checkpoint {position} (size {row.size}, signed {row.time})"
        try:
            cp = parse_checkpoint_text(row.note)
            when = checkpoint_time(cp)
            rotation = _rotation(cp)
            kid = note_key_id(row.note)
        except NoteError as exc:
            raise VerificationError(label, f"the note is malformed: {exc}") from None
        origin = origin or cp.origin
        if cp.origin != origin:
            raise VerificationError(label, f"the note is from log {cp.origin!r}, not {origin!r}")
        if cp.size != row.size:
            raise VerificationError(label, f"stored size {row.size} differs from the signed size {cp.size}")
        if not hmac.compare_digest(cp.root, row.root):
            raise VerificationError(label, "stored root differs from the signed root")
        if when != row.time:
            raise VerificationError(label, f"stored time {row.time} differs from the signed time {when}")
        if kid != row.key_id:
            raise VerificationError(label, f"stored key id {row.key_id} differs from the note's signer {kid}")
        if parsed and cp.size < parsed[-1].checkpoint.size:
            raise VerificationError(
                label, f"the log shrank: the checkpoint before says size {parsed[-1].checkpoint.size}"
            )
        parsed.append(_Parsed(position, row, cp, rotation))
    return parsed, origin


# --- trust across key rotations -----------------------------------------------------------


@dataclass
class _Trust:
    """For each verifier key, the checkpoint positions ``[low, high]`` it may sign."""

    ranges: dict[Verifier, tuple[int, float]] = field(default_factory=dict)

    def grant(self, key: Verifier, low: int, high: float) -> bool:
        old = self.ranges.get(key)
        new = (low, high) if old is None else (min(old[0], low), max(old[1], high))
        if new != old:
            self.ranges[key] = new
            return True
        return False

    def trusted_at(self, position: int) -> list[Verifier]:
        return [key for key, (low, high) in self.ranges.items() if low <= position <= high]


def _resolve_trust(parsed: list[_Parsed], trusted: Iterable[Verifier]) -> _Trust:
    trust = _Trust()
    for key in trusted:
        trust.grant(key, 0, float("inf"))
    rotations = [p for p in parsed if p.rotation is not None]
    checked: set[int] = set()
    changed = True
    while changed:
        changed = False
        for p in rotations:
            old, new = p.rotation  # type: ignore[misc]
            here = {key for key in trust.trusted_at(p.position)}
            if old not in here and new not in here:
                continue
            if p.position not in checked:
                for key in (old, new):
                    try:
                        open_note(p.stored.note, [key])
                    except NoteError as exc:
                        raise VerificationError(p.label, f"key rotation not signed by {key.key_string()}: {exc}") from None
                checked.add(p.position)
            if old in here:
                changed |= trust.grant(new, p.position, float("inf"))
            if new in here:
                changed |= trust.grant(old, 0, p.position)
    return trust


# --- the verifier -------------------------------------------------------------------------------


def verify_log(
    source: LogSource,
    trusted: Sequence[Verifier],
    *,
    origin: str | None = None,
    extra_checkpoints: Sequence[str] = (),
    progress: Progress | None = None,
    progress_every: int = 65536,
    require_checkpoint: bool = True,
) -> VerifyReport:
    """Verify everything listed in the module docstring; raises :class:`VerificationError`.

    ``require_checkpoint``: a non-empty log without any checkpoint fails (nothing vouches for
    it). The daemon's own start-up check relaxes this: a daemon killed before its first
    checkpoint has entries that are durable but not signed yet.
    """
    report = VerifyReport()
    parsed, origin = _parse_checkpoints(source.checkpoints(), origin or source.origin)
    if source.origin is not None and origin != source.origin:
        raise VerificationError("log", f"declares origin {source.origin!r} but its checkpoints say {origin!r}")
    report.origin = origin
    trust = _resolve_trust(parsed, trusted)
    used: dict[str, None] = {}
    for p in parsed:
        keys = trust.trusted_at(p.position)
        try:
            open_checkpoint(p.stored.note, keys, origin)
        except NoteError as exc:
            why = "no valid signature by a trusted key" if "no valid signature" in str(exc) else str(exc)
            raise VerificationError(p.label, why) from None
        for key in keys:
            try:
                open_note(p.stored.note, [key])
            except NoteError:
                continue
            used.setdefault(key.key_string())
    report.keys = list(used)
    report.checkpoints = len(parsed)

    external: list[Checkpoint] = []
    for number, note in enumerate(extra_checkpoints):
        try:
            cp, _ = open_checkpoint(note, list(trust.ranges), origin)
        except NoteError as exc:
            raise VerificationError(f"given checkpoint {number}", str(exc)) from None
        external.append(cp)

    # Where roots must be compared: every stored and every given checkpoint size.
    due: dict[int, list[tuple[str, bytes]]] = {}
    for p in parsed:
        due.setdefault(p.checkpoint.size, []).append((p.label, p.checkpoint.root))
    for number, cp in enumerate(external):
        due.setdefault(cp.size, []).append((f"given checkpoint {number} (size {cp.size})", cp.root))
    sizes = sorted(due)

    tree = CompactTree()
    good_up_to = 0

    def check_roots(size: int, root: bytes) -> None:
        nonlocal good_up_to
        for label, signed in due.get(size, ()):
            if not hmac.compare_digest(signed, root):
                raise VerificationError(
                    label,
                    f"its signed root does not match the entries: one of entries {good_up_to}..{size - 1} "
                    "was changed, inserted, removed or reordered",
                )
        good_up_to = size

    if sizes and sizes[0] == 0:
        check_roots(0, EMPTY_ROOT)
    next_due = iter(sizes[1:] if sizes and sizes[0] == 0 else sizes)
    target = next(next_due, None)
    entries = source.iter_entries()
    expected = 0
    while True:
        # Batches end at every size whose root is due and at every progress step, so failures
        # are found and named in the same order as entry by entry.
        stop = expected + _BATCH
        if target is not None:
            stop = min(stop, target)
        if progress is not None:
            stop = min(stop, (expected // progress_every + 1) * progress_every)
        batch, unreadable = _take(entries, stop - expected)
        tree.extend(_check_entries(batch, expected))
        expected += len(batch)
        if unreadable is not None:
            raise unreadable
        if not batch:
            break
        if expected == target:
            check_roots(expected, tree.root())
            target = next(next_due, None)
        if progress is not None and expected % progress_every == 0:
            progress(expected)
    if progress is not None:
        progress(expected)
    report.entries = expected
    if target is not None:
        label = due[target][0][0]
        raise VerificationError(
            label, f"it covers {target} entries but the log has only {expected}: the log was truncated"
        )
    if require_checkpoint and not parsed and expected:
        raise VerificationError("log", f"has {expected} entries but no signed checkpoint vouches for any of them")
    if parsed:
        last = parsed[-1].checkpoint
        report.last_checkpoint_size = last.size
        report.last_checkpoint_root = last.root
        report.unsigned_tail = expected - last.size

    stored_state = source.tree_state()
    if stored_state is not None or source.has_nodes():
        if stored_state is None and expected:
            raise VerificationError("tree state", f"is missing although the log has {expected} entries")
        if stored_state is not None and stored_state != tree:
            raise VerificationError(
                "tree state",
                f"the stored size {stored_state.size} and frontier do not match the {expected} entries",
            )
        report.tree_state_checked = True
    if source.has_nodes():
        report.nodes_checked = _verify_nodes(source, expected)
    return report


def _take(entries: Iterator[Entry], count: int) -> tuple[list[Entry], VerificationError | None]:
    """Up to ``count`` entries, and the error the source raised after them, if it did (an export
    line that cannot be read): the entries before it are checked first, as entry by entry."""
    batch: list[Entry] = []
    try:
        batch.extend(islice(entries, count))  # keeps what was read before a raise
    except VerificationError as exc:
        return batch, exc
    return batch, None


def _check_entries(batch: list[Entry], first: int) -> list[bytes]:
    """The leaf hashes of ``batch`` (entries ``first``, ``first + 1``, ...) once each one is its
    position's entry. One pass of list operations checks the batch; only a batch that fails it
    is walked entry by entry, to name the first failure. Plain ``==`` on hashes is enough here:
    they are public (anyone holding the log computes them), so timing reveals nothing."""
    sha = hashlib.sha256
    digests = [sha(LEAF_PREFIX + data).digest() for _, data, _ in batch]
    positions = list(range(first, first + len(batch)))
    try:
        clean = (
            [seq for seq, _, _ in batch] == positions
            and all(stored is None or stored == digest for (_, _, stored), digest in zip(batch, digests))
            and [parse_entry(data)["seq"] for _, data, _ in batch] == positions
        )
    except ValueError:
        clean = False
    if not clean:
        _check_each_entry(batch, first, digests)
    return digests


def _check_each_entry(batch: list[Entry], first: int, digests: list[bytes]) -> None:
    for expected, (seq, data, stored_leaf), digest in zip(range(first, first + len(batch)), batch, digests):
        if seq != expected:
            if seq > expected:
                raise VerificationError(f"entry {expected}", f"is missing (the next stored entry is {seq})")
            raise VerificationError(f"entry {seq}", f"is out of order (expected entry {expected})")
        if stored_leaf is not None and not hmac.compare_digest(digest, stored_leaf):
            raise VerificationError(f"entry {seq}", "its bytes do not match its stored leaf hash (the entry was changed)")
        try:
            stated = parse_entry(data)["seq"]
        except ValueError as exc:
            raise VerificationError(f"entry {seq}", f"is not a valid entry: {exc}") from None
        if stated != seq:
            raise VerificationError(f"entry {seq}", f"its bytes say seq {stated}: entries were reordered or replaced")


def _verify_nodes(source: LogSource, size: int) -> int:
    """Each stored node of level L+1 must hash the two verified nodes below it (level 0: the leaf
    hashes, verified above). One sorted pass per level, in batches; O(n) in all, O(batch) memory."""
    levels = max(size.bit_length() - 1, 0)
    if source.max_node_level() > levels:
        raise VerificationError("tree nodes", f"a node above level {levels} exists in a log of {size} entries")
    sha = hashlib.sha256
    below: Iterator[bytes] = source.iter_leaf_hashes()
    for level in range(1, levels + 1):
        want = size >> level
        stored = source.iter_nodes(level)
        for index in range(0, want, _BATCH):
            count = min(_BATCH, want - index)
            children = [bytes(h) for h in islice(below, 2 * count)]
            rows = list(islice(stored, count))
            clean = (
                len(children) == 2 * count
                and [i for i, _ in rows] == list(range(index, index + count))
                and [bytes(h) for _, h in rows]
                == [sha(NODE_PREFIX + left + right).digest() for left, right in zip(children[0::2], children[1::2])]
            )
            if not clean:
                _check_each_node(level, index, count, children, rows)
        extra = next(stored, None)
        if extra is not None:
            raise VerificationError(f"tree node (level {level}, index {extra[0]})", "lies beyond the log")
        below = (h for _, h in source.iter_nodes(level))
    return sum(size >> level for level in range(1, levels + 1))


def _check_each_node(level: int, first: int, count: int, children: list[bytes], rows: list[tuple[int, bytes]]) -> None:
    for offset in range(count):
        index = first + offset
        if 2 * offset + 1 >= len(children):
            raise VerificationError(f"tree node (level {level - 1})", "missing below a stored node")
        row = rows[offset] if offset < len(rows) else None
        if row is None or row[0] != index:
            raise VerificationError(f"tree node (level {level}, index {index})", "is missing")
        left, right = children[2 * offset], children[2 * offset + 1]
        if not hmac.compare_digest(bytes(row[1]), node_hash(left, right)):
            raise VerificationError(
                f"tree node (level {level}, index {index})", "does not hash its two children (proofs would be wrong)"
            )
