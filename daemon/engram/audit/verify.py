"""Verify a whole audit log with nothing but verifier keys: offline, from first entry to last.

Used by ``engram audit verify`` (on a state folder or an export) and by the daemon at start,
which refuses to extend a log that fails. What is checked, in log order, stopping at the first
failure, which is named (``entry 17: ...``, ``checkpoint 3 (size 1200): ...``):

1. every checkpoint note is well formed, comes from the log's origin, and carries a valid
   Ed25519 signature by a trusted key (see *Key rotation* below); the columns stored beside it
   (size, root, key id, time) say what the note says; sizes never shrink;
2. the entries are numbered 0, 1, 2, ... without gap; each one's stored leaf hash is
   ``SHA-256(0x00 || bytes)`` and its bytes are a JSON object whose ``seq`` is its position
   (so entries cannot be swapped). Entries below a signed size are not decoded: the signed
   root vouches for their bytes (3.), and ``seq`` is read from the canonical tail every entry
   the daemon writes ends with; entries after the last checkpoint, and any of another shape,
   are decoded in full;
3. the RFC 9162 root recomputed from the entries equals the signed root of every checkpoint at
   its size, so consecutive checkpoints are consistent: both are prefixes of one sequence of
   leaves (which is what a consistency proof between them demonstrates); a checkpoint larger
   than the log means the log was truncated;
4. checkpoints the caller brings from elsewhere (``--checkpoint``) match the log the same way;
5. for a state folder, the stored tree state (size + frontier) and every stored perfect-subtree
   node (what proofs are served from) agree with the recomputed tree.

The tree is recomputed in chunks of 4096 entries aligned to the tree, a level at a time, and each
chunk's nodes are compared with the stored ones by range: one leaf hash and one node hash per
entry in all. ``since`` (the daemon's start-up) starts from a tree verified before; see
:func:`verify_log`.

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
import re
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
from engram.audit.merkle import LEAF_PREFIX, NODE_PREFIX, CompactTree
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

_CHUNK_LEVEL = 12
_CHUNK = 1 << _CHUNK_LEVEL  # entries checked per list pass, aligned: the per-entry Python overhead is the cost
_SEQ_MEMBER = b',"seq":'
# How every canonical entry ends (members sort by key, these four come last); see _stated_seq.
_TAIL = re.compile(
    rb',"seq":(0|[1-9][0-9]*),"task_id":(?:null|-?(?:0|[1-9][0-9]*)),"time":"[0-9T:.Z-]*+","v":1\}'
).fullmatch


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

    def iter_entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(seq, canonical bytes, stored leaf hash or None)`` in stored order, from ``start``."""
        ...

    def tree_state(self) -> CompactTree | None:
        """The stored size + frontier, or ``None`` where the source has none (exports)."""
        ...

    def has_nodes(self) -> bool: ...

    def nodes_between(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """The stored ``(index, hash)`` of level ``level`` with ``start <= index < end``, in order."""
        ...

    def first_node_from(self, level: int, start: int) -> int | None:
        """The lowest stored index of level ``level`` from ``start`` on, ``None`` if there is none."""
        ...

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
    verified_from: int = 0  # entries below this were taken from ``since``, not read
    mark: CompactTree | None = None  # the tree at the last stored checkpoint size, as verified

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
    since: CompactTree | None = None,
) -> VerifyReport:
    """Verify everything listed in the module docstring; raises :class:`VerificationError`.

    ``require_checkpoint``: a non-empty log without any checkpoint fails (nothing vouches for
    it). The daemon's own start-up check relaxes this: a daemon killed before its first
    checkpoint has entries that are durable but not signed yet.

    ``since``: the tree at the size of a stored checkpoint that an earlier run verified (its
    :attr:`VerifyReport.mark`), for the daemon's start-up. It is used only where a stored
    checkpoint of that size signs its root; then the entries, roots and nodes below that size are
    taken as verified and not read, and the notes of smaller checkpoints are parsed and compared
    with their columns but their signatures are not checked again (those below are what a full
    run, without ``since``, checks). Otherwise it is ignored and everything is checked.
    """
    report = VerifyReport()
    parsed, origin = _parse_checkpoints(source.checkpoints(), origin or source.origin)
    if source.origin is not None and origin != source.origin:
        raise VerificationError("log", f"declares origin {source.origin!r} but its checkpoints say {origin!r}")
    report.origin = origin
    trust = _resolve_trust(parsed, trusted)
    external: list[Checkpoint] = []
    for number, note in enumerate(extra_checkpoints):
        try:
            cp, _ = open_checkpoint(note, list(trust.ranges), origin)
        except NoteError as exc:
            raise VerificationError(f"given checkpoint {number}", str(exc)) from None
        external.append(cp)

    # ``since`` counts only where a stored checkpoint of its size signs its root (that checkpoint's
    # signature is checked below); else everything is checked.
    start = since.size if since is not None else 0
    if since is not None and not (
        any(p.checkpoint.size == start and hmac.compare_digest(p.checkpoint.root, since.root()) for p in parsed)
        and all(cp.size >= start for cp in external)
    ):
        since, start = None, 0
    report.verified_from = start

    used: dict[str, None] = {}
    for p in parsed:
        if p.checkpoint.size < start:
            continue  # signed below the verified mark (see ``since``)
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

    # Where roots must be compared: every stored and every given checkpoint size from ``start``.
    due: dict[int, list[tuple[str, bytes]]] = {}
    for p in parsed:
        due.setdefault(p.checkpoint.size, []).append((p.label, p.checkpoint.root))
    for number, cp in enumerate(external):
        due.setdefault(cp.size, []).append((f"given checkpoint {number} (size {cp.size})", cp.root))
    stored_sizes = {p.checkpoint.size for p in parsed}
    sizes = sorted(size for size in due if size > start or size == 0)
    covered = max(due, default=0)  # entries below this are vouched for by a signed root

    tree = since.copy() if since is not None else CompactTree()
    good_up_to = start
    if since is not None:
        report.mark = since.copy()

    def check_roots(size: int, at_size: CompactTree) -> None:
        nonlocal good_up_to
        root = at_size.root()
        for label, signed in due.get(size, ()):
            if not hmac.compare_digest(signed, root):
                raise VerificationError(
                    label,
                    f"its signed root does not match the entries: one of entries {good_up_to}..{size - 1} "
                    "was changed, inserted, removed or reordered",
                )
        good_up_to = size
        if size in stored_sizes:
            report.mark = at_size.copy()

    if sizes and sizes[0] == 0:
        check_roots(0, CompactTree())
        sizes = sizes[1:]
    targets = iter(sizes)
    target = next(targets, None)
    nodes = _NodeCheck(source) if source.has_nodes() else None
    entries = source.iter_entries(start)
    expected = start
    next_progress = (expected // progress_every + 1) * progress_every
    while True:
        # Chunks are aligned to _CHUNK leaves, so their nodes are hashed a level at a time; the
        # first chunk after ``since`` is walked leaf by leaf up to the next aligned size.
        batch, unreadable = _take(entries, _CHUNK - expected % _CHUNK)
        digests, problem = _check_entries(batch, expected, covered)
        end = expected + len(batch)
        bad_at = problem[0] if problem is not None else end
        # Failures are named in log order: a root due before the first bad entry comes first.
        if expected % _CHUNK == 0:
            levels = _levels(digests)
            while target is not None and target <= bad_at:
                check_roots(target, _grown(tree, levels, target - expected))
                target = next(targets, None)
            if problem is None and nodes is not None:
                for level in range(1, len(levels)):
                    nodes.add(level, expected >> level, levels[level])
            if problem is None:
                on_node = nodes.add_one if nodes is not None else None
                for level, piece in _pieces(levels, len(batch)):
                    tree.append_subtree(piece, level, on_node if level == _CHUNK_LEVEL else None)
        else:
            on_node = nodes.add_one_any if nodes is not None else None
            for offset, digest in enumerate(digests[: bad_at - expected]):
                tree.append(digest, on_node)
                if expected + offset + 1 == target:
                    check_roots(target, tree)
                    target = next(targets, None)
        if problem is not None:
            raise problem[1]
        expected = end
        if unreadable is not None:
            raise unreadable
        if progress is not None and expected >= next_progress:
            progress(expected)
            next_progress = (expected // progress_every + 1) * progress_every
        if not batch:
            break
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
    if nodes is not None:
        report.nodes_checked = nodes.finish(expected)
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


# --- entries ---------------------------------------------------------------------------------


def _stated_seq(data: bytes, signed: bool) -> int | None:
    """The ``seq`` an entry's bytes state, ``None`` when they are not a valid entry.

    An entry below a signed size needs no decoding: the checkpoint's root covers its bytes, so
    if they were not the daemon's own canonical JSON the root comparison fails anyway. Its
    ``seq`` is read from the fixed tail every canonical entry ends with (``seq``, ``task_id``,
    ``time`` and ``v`` sort last; no string can hold an unescaped quote); entries of any other
    shape, and every entry no signature covers yet, are decoded in full."""
    if signed:
        match = _TAIL(data, data.rfind(_SEQ_MEMBER))
        if match is not None:
            return int(match[1])
    try:
        return parse_entry(data)["seq"]
    except ValueError:
        return None


def _check_entries(
    batch: list[Entry], first: int, covered: int
) -> tuple[list[bytes], tuple[int, VerificationError] | None]:
    """The leaf hashes of ``batch`` (entries ``first``, ``first + 1``, ...) and the first entry
    that is not its position's entry, with what is wrong with it. One pass of list operations
    checks the batch; only a batch that fails it is walked entry by entry, to name the first
    failure. Plain ``==`` on hashes is enough here: they are public (anyone holding the log
    computes them), so timing reveals nothing."""
    sha = hashlib.sha256
    digests = [sha(LEAF_PREFIX + data).digest() for _, data, _ in batch]
    positions = list(range(first, first + len(batch)))
    signed = max(0, min(len(batch), covered - first))
    tail, mark = _TAIL, _SEQ_MEMBER
    stated = [
        int(found[1]) if (found := tail(data, data.rfind(mark))) is not None else _stated_seq(data, True)
        for _, data, _ in batch[:signed]
    ]
    stated += [_stated_seq(data, False) for _, data, _ in batch[signed:]]
    stored = [leaf for _, _, leaf in batch]
    clean = (
        [seq for seq, _, _ in batch] == positions
        and (stored == digests or all(leaf is None or leaf == digest for leaf, digest in zip(stored, digests)))
        and stated == positions
    )
    if clean:
        return digests, None
    return digests, _first_bad_entry(batch, first, digests, covered)


def _first_bad_entry(
    batch: list[Entry], first: int, digests: list[bytes], covered: int
) -> tuple[int, VerificationError]:
    for expected, (seq, data, stored_leaf), digest in zip(range(first, first + len(batch)), batch, digests):
        if seq != expected:
            if seq > expected:
                return expected, VerificationError(f"entry {expected}", f"is missing (the next stored entry is {seq})")
            return expected, VerificationError(f"entry {seq}", f"is out of order (expected entry {expected})")
        if stored_leaf is not None and not hmac.compare_digest(digest, stored_leaf):
            return expected, VerificationError(
                f"entry {seq}", "its bytes do not match its stored leaf hash (the entry was changed)"
            )
        stated = _stated_seq(data, seq < covered)
        if stated is None:
            try:
                parse_entry(data)
            except ValueError as exc:
                return expected, VerificationError(f"entry {seq}", f"is not a valid entry: {exc}")
        if stated != seq:
            return expected, VerificationError(
                f"entry {seq}", f"its bytes say seq {stated}: entries were reordered or replaced"
            )
    raise AssertionError("a batch that failed its list checks has no bad entry")


# --- the tree -----------------------------------------------------------------------------------


def _levels(digests: list[bytes]) -> list[list[bytes]]:
    """The perfect subtrees of an aligned chunk, a level at a time: ``levels[h][i]`` covers the
    chunk's leaves ``[i << h, (i + 1) << h)``. One list pass per level, no per-leaf bookkeeping."""
    sha = hashlib.sha256
    levels = [digests]
    while len(below := levels[-1]) >= 2:
        levels.append([sha(NODE_PREFIX + left + right).digest() for left, right in zip(below[0::2], below[1::2])])
    return levels


def _pieces(levels: list[list[bytes]], count: int) -> list[tuple[int, bytes]]:
    """The perfect subtrees that make up the first ``count`` leaves of a chunk, largest first."""
    pieces: list[tuple[int, bytes]] = []
    offset = 0
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            pieces.append((level, levels[level][offset >> level]))
            offset += 1 << level
    return pieces


def _grown(tree: CompactTree, levels: list[list[bytes]], count: int) -> CompactTree:
    """``tree`` (at an aligned size) grown by the first ``count`` leaves of the chunk after it."""
    grown = tree.copy()
    for level, piece in _pieces(levels, count):
        grown.append_subtree(piece, level)
    return grown


class _NodeCheck:
    """Compares the node hashes the verifier computed with the stored ones, a range of one level
    at a time. The first difference is kept and raised after the entries and the tree state
    are checked, so that failures are named in the same order as before: entries first."""

    _FLUSH = 8192  # hashes of one level compared per query

    def __init__(self, source: LogSource) -> None:
        self.source = source
        self.pending: dict[int, tuple[int, list[bytes]]] = {}
        self.problem: VerificationError | None = None
        self.checked = 0

    def add(self, level: int, first: int, hashes: list[bytes]) -> None:
        start, held = self.pending.get(level, (first, []))
        if start + len(held) != first:
            self._flush(level)
            start, held = first, []
        held.extend(hashes)
        self.pending[level] = (start, held)
        if len(held) >= self._FLUSH:
            self._flush(level)

    def add_one(self, level: int, index: int, digest: bytes) -> None:
        """``on_node`` for aligned chunks: the nodes above the chunk level (its own is in its levels)."""
        if level > _CHUNK_LEVEL:
            self.add(level, index, [digest])

    def add_one_any(self, level: int, index: int, digest: bytes) -> None:
        """``on_node`` for leaves appended one by one: every node above the leaves."""
        if level > 0:
            self.add(level, index, [digest])

    def _flush(self, level: int) -> None:
        start, held = self.pending.pop(level, (0, []))
        if not held:
            return
        rows = self.source.nodes_between(level, start, start + len(held))
        self.checked += len(held)
        if self.problem is not None:
            return
        # (level, idx) is unique: as many rows as indices in the range means each one is there.
        if len(rows) == len(held) and [h for _, h in rows] == held:
            return
        stored = dict(rows)
        for index, digest in enumerate(held, start):
            found = stored.get(index)
            if found is None:
                self.problem = VerificationError(f"tree node (level {level}, index {index})", "is missing")
                return
            if found != digest:
                self.problem = VerificationError(
                    f"tree node (level {level}, index {index})", "does not hash its two children (proofs would be wrong)"
                )
                return

    def finish(self, size: int) -> int:
        """Compare what is still pending, then look for nodes beyond a log of ``size`` entries."""
        levels = max(size.bit_length() - 1, 0)
        if self.source.max_node_level() > levels:
            raise VerificationError("tree nodes", f"a node above level {levels} exists in a log of {size} entries")
        for level in sorted(self.pending):
            self._flush(level)
        if self.problem is not None:
            raise self.problem
        for level in range(1, levels + 1):
            extra = self.source.first_node_from(level, size >> level)
            if extra is not None:
                raise VerificationError(f"tree node (level {level}, index {extra})", "lies beyond the log")
        return self.checked
