"""RFC 6962 / RFC 9162 Merkle trees: hashing, a compact frontier, proof generation and verification.

The audit log is an append-only list of entries. Each entry contributes one *leaf hash*
(``SHA-256(0x00 || data)``); interior nodes are ``SHA-256(0x01 || left || right)`` and the tree
over ``n`` leaves splits at the largest power of two strictly below ``n`` (RFC 9162 §2.1.1). The
domain-separation bytes keep a leaf from ever being passed off as an interior node.

Pieces, from the bottom up:

* :func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT` — the hash primitives.
* :class:`CompactTree` — the right-hand frontier of the tree (one hash per set bit of the size).
  Appending costs O(1) amortised / O(log n) worst case, the root costs O(log n) node hashes, and
  the whole state is ``size`` plus at most 64 hashes, which is what the daemon persists.
* :func:`inclusion_proof`, :func:`consistency_proof` — RFC 9162 §2.1.3.1 / §2.1.4.1 proof
  generation against *any* storage: they only ask a ``subtree_hash(start, end)`` callable for the
  O(log n) subtrees a proof is made of. :func:`subtree_hasher` turns a lookup of stored perfect
  (power-of-two, aligned) subtrees into such a callable.
* :class:`MerkleTree` — an in-memory log that keeps every perfect subtree hash (≈ 2 × 32 bytes per
  leaf), so any root, inclusion or consistency proof costs O(log n) lookups plus at most O(log n)
  node hashes: tens of microseconds on a million leaves.
* :func:`verify_inclusion`, :func:`verify_consistency` — RFC 9162 §2.1.3.2 / §2.1.4.2 verification,
  raising :class:`ProofError` on any mismatch.
* :func:`root_of`, :func:`roots_at` — streaming O(n) recomputation of the root(s) of an exported
  log, with O(log n) memory.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from engram.errors import DataError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "CompactTree",
    "MerkleTree",
    "ProofError",
    "SubtreeHash",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_of",
    "roots_at",
    "subtree_hasher",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Bytes in every hash of the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
_MAX_SIZE = (1 << 64) - 1  # tree sizes are uint64 on every wire format we speak

SubtreeHash = Callable[[int, int], bytes]
"""``subtree_hash(start, end)``: the Merkle tree hash of leaves ``[start, end)``, ``start < end``."""

PerfectHash = Callable[[int, int], bytes]
"""``perfect_hash(level, index)``: hash of the perfect subtree over leaves
``[index << level, (index + 1) << level)``; level 0 is the leaf hashes themselves."""

_sha256 = hashlib.sha256


class ProofError(DataError, ValueError):
    """A Merkle proof (or the sizes and hashes that come with it) does not verify."""


def leaf_hash(data: bytes) -> bytes:
    """Hash of one log entry: ``SHA-256(0x00 || data)``."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (``n >= 2``): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(name: str, value: int, exc: type[ValueError] = ValueError) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
        raise exc(f"{name} must be an integer in [0, 2**64), got {value!r}")


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {size}")


# --------------------------------------------------------------------------------------------
# Compact frontier
# --------------------------------------------------------------------------------------------


class CompactTree:
    """The frontier of a Merkle tree: enough state to append leaves and compute the root.

    A tree of ``size`` leaves decomposes into perfect subtrees, one per set bit of ``size``, from
    the largest (leftmost) to the smallest (rightmost). Those ``popcount(size)`` hashes are the
    whole state; :attr:`hashes` lists them left to right. Appending a leaf merges equal-sized
    subtrees like a binary counter's carry: O(1) node hashes amortised, ``log2(size)`` at worst.
    :meth:`root` folds the frontier from the right in ``popcount(size) - 1`` node hashes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        _check_size("size", size)
        frontier = [bytes(h) for h in hashes]
        if len(frontier) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, got {len(frontier)}"
            )
        for h in frontier:
            if len(h) != HASH_SIZE:
                raise ValueError(f"frontier hashes must be {HASH_SIZE} bytes, got {len(h)}")
        self._size = size
        self._hashes = frontier

    # -- state ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Frontier hashes, largest subtree first; with :attr:`size` this is the whole state."""
        return tuple(self._hashes)

    def __len__(self) -> int:
        return self._size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactTree):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"CompactTree(size={self._size}, root={self.root().hex()[:16]}…)"

    def copy(self) -> CompactTree:
        return CompactTree(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        """``uint64 big-endian size || frontier hashes``: at most 8 + 64 × 32 bytes."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactTree:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on a malformed or truncated blob."""
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ValueError(f"compact tree blob has invalid length {len(data)}")
        size = int.from_bytes(data[:8], "big")
        body = data[8:]
        return cls(size, (body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)))

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> CompactTree:
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    # -- growth -----------------------------------------------------------------------------

    def append(
        self, leaf: bytes, on_node: Callable[[int, int, bytes], None] | None = None
    ) -> None:
        """Append one leaf *hash* (see :func:`leaf_hash`).

        ``on_node(level, index, hash)`` is called for every perfect subtree this append
        completes, the leaf itself first (level 0): a store that keeps those hashes can serve
        any proof later through :func:`subtree_hasher`.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        if self._size == _MAX_SIZE:
            raise OverflowError("tree is full")
        h = bytes(leaf)
        size = self._size
        frontier = self._hashes
        level = 0
        if on_node is not None:
            on_node(0, size, h)
        # Each trailing 1-bit of the old size is a subtree of the same height as ``h``: merge.
        while size & 1:
            h = _sha256(NODE_PREFIX + frontier.pop() + h).digest()
            size >>= 1
            level += 1
            if on_node is not None:
                on_node(level, size, h)
        frontier.append(h)
        self._size += 1

    def append_subtree(
        self, subtree: bytes, level: int, on_node: Callable[[int, int, bytes], None] | None = None
    ) -> None:
        """Append the hash of a perfect subtree of ``2**level`` leaves at once.

        Only where such a subtree is aligned, i.e. the size is a multiple of ``2**level``: the
        frontier then holds nothing smaller, and the subtree merges like a leaf one level up.
        ``on_node`` is called as by :meth:`append`, for the subtree itself and every node it
        completes above it. Used by bulk verification, which hashes aligned chunks level by level.
        """
        if len(subtree) != HASH_SIZE:
            raise ValueError(f"subtree hash must be {HASH_SIZE} bytes, got {len(subtree)}")
        width = 1 << level
        if self._size % width:
            raise ValueError(f"a subtree of {width} leaves does not start at an aligned size ({self._size})")
        if self._size + width > _MAX_SIZE:
            raise OverflowError("tree is full")
        h = bytes(subtree)
        index = self._size >> level
        frontier = self._hashes
        if on_node is not None:
            on_node(level, index, h)
        while index & 1:
            h = _sha256(NODE_PREFIX + frontier.pop() + h).digest()
            index >>= 1
            level += 1
            if on_node is not None:
                on_node(level, index, h)
        frontier.append(h)
        self._size += width

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes; O(1) amortised node hashes each."""
        # The loop is append() inlined: this is the hot path of verifying a whole exported log.
        frontier = self._hashes
        size = self._size
        node_prefix = NODE_PREFIX
        sha = _sha256
        for leaf in leaf_hashes:
            if len(leaf) != HASH_SIZE:
                self._size = size
                raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
            h = bytes(leaf)
            carry = size
            while carry & 1:
                h = sha(node_prefix + frontier.pop() + h).digest()
                carry >>= 1
            frontier.append(h)
            size += 1
        if size > _MAX_SIZE:
            raise OverflowError("tree is full")
        self._size = size

    def root(self) -> bytes:
        """Merkle tree hash of all leaves so far (:data:`EMPTY_ROOT` when empty)."""
        if not self._hashes:
            return EMPTY_ROOT
        h = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            h = _sha256(NODE_PREFIX + left + h).digest()
        return h


# --------------------------------------------------------------------------------------------
# Proof generation (RFC 9162 §2.1.3.1 and §2.1.4.1)
# --------------------------------------------------------------------------------------------


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of the first ``size`` leaves (RFC 9162 PATH).

    Walks from the root towards the leaf, asking ``subtree_hash`` for the sibling at each of the
    ``ceil(log2(size))`` levels; returns the siblings leaf-first, as the RFC orders them. All of
    them are perfect aligned subtrees except at most one on the right edge of the tree.
    """
    _check_size("size", size)
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"leaf index {index!r} is out of range for tree size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            proof.append(subtree_hash(mid, end))
            end = mid
        else:
            proof.append(subtree_hash(start, mid))
            start = mid
    proof.reverse()
    return proof


def consistency_proof(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Proof that the first ``size1`` leaves are a prefix of the first ``size2`` (RFC 9162 PROOF).

    ``0 < size1 <= size2``; equal sizes give the empty proof. Iterative form of SUBPROOF: at most
    ``ceil(log2(size2)) + 1`` subtree hashes, returned in the RFC's order (deepest first).
    """
    _check_size("size1", size1)
    _check_size("size2", size2)
    if size1 == 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")
    if size1 > size2:
        raise ValueError(f"size1 ({size1}) is larger than size2 ({size2})")
    proof: list[bytes] = []
    start, end, m = 0, size2, size1  # current subtree [start, end); m = old size inside it
    old_tree_is_whole_subtree = True  # SUBPROOF's ``b``: this subtree is the whole old tree
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtree_hash(start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k))
            start += k
            m -= k
            old_tree_is_whole_subtree = False
    if not old_tree_is_whole_subtree:
        # The verifier cannot know this node (it is only part of the old tree): send it.
        proof.append(subtree_hash(start, end))
    proof.reverse()
    return proof


def subtree_hasher(perfect_hash: PerfectHash) -> SubtreeHash:
    """Build a ``subtree_hash(start, end)`` from a lookup of stored perfect subtree hashes.

    A range whose length is a power of two and whose start is aligned to it is one lookup; any
    other range is split as RFC 9162 splits trees. For the ranges proofs ask for (aligned starts)
    that is at most ``log2(end - start)`` lookups and node hashes.
    """

    def subtree_hash(start: int, end: int) -> bytes:
        if start == end == 0:
            return EMPTY_ROOT
        if not 0 <= start < end:
            raise ValueError(f"invalid subtree range [{start}, {end})")
        # Split off the left parts, collect right-hand pieces, then fold from the right: the
        # same shape as the RFC recursion without Python recursion.
        lefts: list[bytes] = []
        while True:
            n = end - start
            if n & (n - 1) == 0 and start % n == 0:
                h = perfect_hash(n.bit_length() - 1, start // n)
                break
            k = _split(n)
            if start % k == 0:
                lefts.append(perfect_hash(k.bit_length() - 1, start // k))
            else:  # unaligned ranges never occur in proofs; still answer them correctly
                lefts.append(subtree_hash(start, start + k))
            start += k
        for left in reversed(lefts):
            h = _sha256(NODE_PREFIX + left + h).digest()
        return h

    return subtree_hash


# --------------------------------------------------------------------------------------------
# In-memory tree
# --------------------------------------------------------------------------------------------


class MerkleTree:
    """An append-only Merkle tree held in memory, with every perfect subtree hash cached.

    ``_levels[h]`` is a flat ``bytearray`` of the hashes of all *complete* aligned subtrees of
    ``2**h`` leaves (level 0 = the leaf hashes). That costs about ``2 × 32 × n`` bytes (≈ 64 MB for
    a million leaves) and gives:

    * append: O(1) amortised node hashes;
    * hash of any perfect subtree: one slice;
    * root at any size, inclusion proof, consistency proof: O(log n) slices plus at most
      O(log n) node hashes for the single ragged subtree on the right edge.
    """

    __slots__ = ("_hasher", "_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self._hasher = subtree_hasher(self._perfect_hash)

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """Build a tree in bulk, one level at a time (faster than appending leaf by leaf)."""
        tree = cls()
        level0 = bytearray()
        for leaf in leaf_hashes:
            if len(leaf) != HASH_SIZE:
                raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
            level0 += leaf
        tree._levels = [level0]
        tree._size = len(level0) // HASH_SIZE
        below = memoryview(level0)
        pair = 2 * HASH_SIZE
        while len(below) >= pair:
            usable = len(below) - len(below) % pair  # a trailing odd node has no parent yet
            parents = [
                _sha256(NODE_PREFIX + below[i : i + pair]).digest() for i in range(0, usable, pair)
            ]
            level = bytearray(b"".join(parents))
            tree._levels.append(level)
            below = memoryview(level)
        return tree

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        index = self._size
        levels = self._levels
        levels[0] += leaf
        self._size += 1
        # Every trailing 1-bit of the new size completes one more perfect subtree above.
        n, level = self._size, 0
        while n & 1 == 0:
            below = levels[level]
            h = _sha256(NODE_PREFIX + below[-2 * HASH_SIZE :]).digest()
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += h
            n >>= 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf in leaf_hashes:
            self.append(leaf)

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} out of range for tree size {self._size}")
        return self._perfect_hash(0, index)

    def _perfect_hash(self, level: int, index: int) -> bytes:
        off = index * HASH_SIZE
        return bytes(self._levels[level][off : off + HASH_SIZE])

    def subtree_hash(self, start: int, end: int) -> bytes:
        """Merkle tree hash of leaves ``[start, end)``; ``(0, 0)`` is the empty tree."""
        if not 0 <= start <= end <= self._size or (start == end and start != 0):
            raise ValueError(f"invalid subtree range [{start}, {end}) for tree size {self._size}")
        return self._hasher(start, end)

    def _size_arg(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"size {size} exceeds the tree size {self._size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all of them)."""
        return self.subtree_hash(0, self._size_arg(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._size_arg(size), self.subtree_hash)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(size1, self._size_arg(size2), self.subtree_hash)

    def compact_tree(self, size: int | None = None) -> CompactTree:
        """Frontier of the first ``size`` leaves: one lookup per set bit of ``size``."""
        size = self._size_arg(size)
        hashes: list[bytes] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(self._perfect_hash(level, start >> level))
                start += 1 << level
        return CompactTree(size, hashes)


# --------------------------------------------------------------------------------------------
# Bulk roots
# --------------------------------------------------------------------------------------------


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """Root over a stream of leaf hashes: O(n) time, O(log n) memory."""
    return CompactTree.from_leaf_hashes(leaf_hashes).root()


def roots_at(leaf_hashes: Iterable[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """Roots at several tree sizes in one pass over the leaves (e.g. every signed checkpoint).

    O(n + k log n) for k sizes. Raises ``ValueError`` when the stream has fewer leaves than the
    largest size asked for.
    """
    wanted = sorted(set(sizes))
    for s in wanted:
        _check_size("size", s)
    roots: dict[int, bytes] = {}
    tree = CompactTree()
    it = iter(leaf_hashes)
    for target in wanted:
        while tree.size < target:
            leaf = next(it, None)
            if leaf is None:
                raise ValueError(f"only {tree.size} leaves, no root at size {target}")
            tree.append(leaf)
        roots[target] = tree.root()
    return roots


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)
# --------------------------------------------------------------------------------------------


def _inclusion_proof_length(index: int, size: int) -> int:
    """Length of the audit path for ``index < size``: the levels where the path to the leaf and
    the path to the last leaf diverge, plus the right-border levels where a left sibling exists."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def root_from_inclusion_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root implied by an inclusion proof; raises :class:`ProofError` if the proof
    cannot belong to leaf ``index`` of a tree of ``size`` leaves."""
    _check_size("index", index, ProofError)
    _check_size("size", size, ProofError)
    if index >= size:
        raise ProofError(f"leaf index {index} is beyond the tree size {size}")
    _check_hash("leaf hash", leaf)
    want = _inclusion_proof_length(index, size)
    if len(proof) != want:
        raise ProofError(f"wrong inclusion proof length {len(proof)}, want {want}")
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
    # RFC 9162 §2.1.3.2: fn walks up from the leaf, sn from the last leaf of the tree.
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # On the right border a node with no right sibling is promoted unchanged.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with root ``root``."""
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if not hmac.compare_digest(computed, bytes(root)):
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} leads to root {computed.hex()}, "
            f"not {bytes(root).hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves with ``root2`` extends the one of ``size1`` with
    ``root1``. Raises :class:`ProofError` otherwise.

    Rules beyond the RFC, shared with transparency-dev/merkle's conformance suite: a proof from
    size 0 is rejected (it proves nothing and usually signals a confused caller), and equal sizes
    need an empty proof and byte-equal roots.
    """
    _check_size("size1", size1, ProofError)
    _check_size("size2", size2, ProofError)
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) is larger than size2 ({size2})")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) but the proof is not empty")
        if not hmac.compare_digest(bytes(root1), bytes(root2)):
            raise ProofError(f"sizes are equal ({size1}) but the roots differ")
        return
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    # Expected length: the inclusion path of the old tree's last leaf, minus the levels inside
    # the largest perfect subtree ending there, plus that subtree's hash unless it is root1.
    shift = (size1 & -size1).bit_length() - 1
    seeded = size1 == 1 << shift
    want = _inclusion_proof_length(size1 - 1, size2) - shift + (0 if seeded else 1)
    if len(proof) != want:
        raise ProofError(f"wrong consistency proof length {len(proof)}, want {want}")
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)

    path = [bytes(root1), *proof] if seeded else list(proof)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not hmac.compare_digest(fr, bytes(root1)):
        raise ProofError(f"consistency proof does not lead to root1 for size {size1}")
    if not hmac.compare_digest(sr, bytes(root2)):
        raise ProofError(f"consistency proof does not lead to root2 for size {size2}")
