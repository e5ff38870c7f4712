"""engram.audit.merkle against a naive transcription of RFC 9162 §2.1 (MTH, PATH, PROOF)."""

from __future__ import annotations

import functools
import hashlib
import random

import pytest
from engram.audit import merkle
from engram.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    MerkleTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    roots_at,
    subtree_hasher,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------------------------
# Naive reference: the RFC's recursive definitions, verbatim, over tuples of leaf hashes.
# --------------------------------------------------------------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def mth(d: tuple[bytes, ...]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    return subproof(m, d, True)


LEAVES = tuple(leaf_hash(b"leaf %d" % i) for i in range(200))


@pytest.fixture(scope="module")
def tree64() -> MerkleTree:
    return MerkleTree.from_leaf_hashes(LEAVES[:64])


# --------------------------------------------------------------------------------------------
# Hashing and roots
# --------------------------------------------------------------------------------------------

README_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243",
                 "5051525354555657", "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
README_ROOTS = ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d", "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125", "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7", "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4", "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef", "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c", "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


@pytest.mark.parametrize("size", range(9))
def test_readme_roots(size: int) -> None:
    leaves = [leaf_hash(d) for d in README_LEAVES[:size]]
    want = bytes.fromhex(README_ROOTS[size])
    assert root_of(leaves) == want
    assert MerkleTree.from_leaf_hashes(leaves).root() == want
    assert CompactTree.from_leaf_hashes(leaves).root() == want


def test_hash_primitives() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


def test_compact_tree_roots_match_naive() -> None:
    tree = CompactTree()
    assert tree.root() == EMPTY_ROOT
    for size in range(1, 201):
        tree.append(LEAVES[size - 1])
        assert tree.size == size
        assert len(tree.hashes) == size.bit_count()
        assert tree.root() == mth(LEAVES[:size]), size


def test_compact_tree_extend_equals_append() -> None:
    for size in (0, 1, 7, 64, 200):
        a = CompactTree()
        for leaf in LEAVES[:size]:
            a.append(leaf)
        b = CompactTree()
        b.extend(LEAVES[:size])
        assert a == b


def test_compact_tree_append_subtree_equals_its_leaves() -> None:
    # 32 leaves, then a subtree of 16, then 8 + 2 + 1 more: every node is reported as by append().
    by_leaf, by_subtree = CompactTree(), CompactTree()
    leaf_nodes: list[tuple[int, int, bytes]] = []
    subtree_nodes: list[tuple[int, int, bytes]] = []
    for leaf in LEAVES[:59]:
        by_leaf.append(leaf, lambda *node: leaf_nodes.append(node))
    by_subtree.extend(LEAVES[:32])
    start = 32
    for level in (4, 3, 1, 0):
        by_subtree.append_subtree(mth(LEAVES[start : start + (1 << level)]), level, lambda *node: subtree_nodes.append(node))
        start += 1 << level
    assert start == 59 and by_subtree == by_leaf
    assert set(subtree_nodes) <= set(leaf_nodes)
    assert {n for n in leaf_nodes if n[0] >= 4 and n[1] << n[0] >= 32} <= set(subtree_nodes)
    with pytest.raises(ValueError, match="aligned"):
        by_subtree.append_subtree(LEAVES[0], 2)  # size 59 is not a multiple of 4


def test_compact_tree_serialisation_round_trip() -> None:
    for size in range(0, 200, 7):
        tree = CompactTree.from_leaf_hashes(LEAVES[:size])
        restored = CompactTree.from_bytes(tree.to_bytes())
        assert restored == tree and restored.root() == tree.root()
        assert len(tree.to_bytes()) == 8 + 32 * size.bit_count()
        rebuilt = CompactTree(tree.size, list(tree.hashes))
        assert rebuilt == tree
        # A restored frontier keeps growing into the same tree.
        rebuilt.extend(LEAVES[size:])
        assert rebuilt.root() == mth(LEAVES)
        copy = tree.copy()
        copy.append(LEAVES[0])
        assert copy != tree


def test_compact_tree_rejects_bad_state() -> None:
    with pytest.raises(ValueError):
        CompactTree(3, [b"\x00" * 32])  # needs popcount(3) = 2 hashes
    with pytest.raises(ValueError):
        CompactTree(1, [b"\x00" * 31])
    with pytest.raises(ValueError):
        CompactTree(-1, [])
    with pytest.raises(ValueError):
        CompactTree.from_bytes(b"\x00" * 7)
    with pytest.raises(ValueError):
        CompactTree.from_bytes((2).to_bytes(8, "big") + b"\x00" * 33)
    with pytest.raises(ValueError):
        CompactTree.from_bytes((3).to_bytes(8, "big") + b"\x00" * 32)
    with pytest.raises(ValueError):
        CompactTree().append(b"short")


def test_compact_tree_on_node_reports_every_perfect_subtree() -> None:
    reported: dict[tuple[int, int], bytes] = {}
    tree = CompactTree()
    for leaf in LEAVES[:100]:
        tree.append(leaf, on_node=lambda level, index, h: reported.__setitem__((level, index), h))
    expected = {
        (level, index): mth(LEAVES[index << level : (index + 1) << level])
        for level in range(7)
        for index in range(100 >> level)
    }
    assert reported == expected
    # Those stored nodes are enough to serve any subtree hash.
    sub = subtree_hasher(lambda level, index: reported[(level, index)])
    assert sub(0, 100) == mth(LEAVES[:100])
    assert sub(3, 77) == mth(LEAVES[3:77])  # unaligned ranges are still right


def test_merkle_tree_build_paths_agree() -> None:
    bulk = MerkleTree.from_leaf_hashes(LEAVES)
    incremental = MerkleTree()
    for i, leaf in enumerate(LEAVES):
        assert incremental.append(leaf) == i
        assert incremental.root() == mth(LEAVES[: i + 1])
    for size in range(len(LEAVES) + 1):
        assert bulk.root(size) == incremental.root(size) == mth(LEAVES[:size])
        assert bulk.compact_tree(size) == CompactTree.from_leaf_hashes(LEAVES[:size])
    assert bulk.leaf_hash(5) == LEAVES[5]
    assert len(bulk) == bulk.size == len(LEAVES)
    with pytest.raises(IndexError):
        bulk.leaf_hash(len(LEAVES))
    with pytest.raises(ValueError):
        bulk.root(len(LEAVES) + 1)
    with pytest.raises(ValueError):
        bulk.subtree_hash(5, 5)


def test_roots_at_matches_naive() -> None:
    sizes = [0, 1, 2, 3, 63, 64, 65, 199, 200]
    got = roots_at(iter(LEAVES), reversed(sizes))  # any order, any iterable
    assert got == {s: mth(LEAVES[:s]) for s in sizes}
    with pytest.raises(ValueError):
        roots_at(LEAVES, [201])


# --------------------------------------------------------------------------------------------
# Proofs: exhaustive agreement with the RFC definitions, then verification
# --------------------------------------------------------------------------------------------


def _naive_subtree_hash(start: int, end: int) -> bytes:
    return mth(LEAVES[start:end])


def test_inclusion_proofs_match_rfc_and_verify(tree64: MerkleTree) -> None:
    for size in range(1, 65):
        d = LEAVES[:size]
        root = mth(d)
        for index in range(size):
            want = path(index, d)
            got = tree64.inclusion_proof(index, size)
            assert got == want, (index, size)
            assert inclusion_proof(index, size, _naive_subtree_hash) == want
            verify_inclusion(LEAVES[index], index, size, got, root)
            assert root_from_inclusion_proof(LEAVES[index], index, size, got) == root


def test_consistency_proofs_match_rfc_and_verify(tree64: MerkleTree) -> None:
    for size2 in range(1, 65):
        d = LEAVES[:size2]
        root2 = mth(d)
        for size1 in range(1, size2 + 1):
            want = proof(size1, d)
            got = tree64.consistency_proof(size1, size2)
            assert got == want, (size1, size2)
            assert consistency_proof(size1, size2, _naive_subtree_hash) == want
            verify_consistency(size1, size2, got, mth(LEAVES[:size1]), root2)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % 32] ^= 1 << bit % 8
    return bytes(b)


def _corruptions(p: list[bytes]) -> list[list[bytes]]:
    """Bit flips in each element, extra elements at either end, truncation, reordering."""
    out = [p[:i] + [_flip(p[i], 7 * i + 3)] + p[i + 1 :] for i in range(len(p))]
    out += [p + [LEAVES[0]], [LEAVES[0]] + p]
    if p:
        out += [p[:-1], p[1:]]
    if len(p) > 1:
        out.append(p[::-1])
    return out


def test_corrupted_inclusion_proofs_are_rejected(tree64: MerkleTree) -> None:
    for size in range(1, 33):
        root = tree64.root(size)
        for index in range(size):
            p = tree64.inclusion_proof(index, size)
            for bad in _corruptions(p):
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], index, size, bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(_flip(LEAVES[index], 0), index, size, p, root)
            with pytest.raises(ProofError):
                verify_inclusion(LEAVES[index], index, size, p, _flip(root, 255))
            for other in range(size):  # the proof binds the position too
                if other != index:
                    with pytest.raises(ProofError):
                        verify_inclusion(LEAVES[index], other, size, p, root)
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[0], size, size, [], root)


def test_corrupted_consistency_proofs_are_rejected(tree64: MerkleTree) -> None:
    for size2 in range(2, 33):
        root2 = tree64.root(size2)
        for size1 in range(1, size2):
            root1 = tree64.root(size1)
            p = tree64.consistency_proof(size1, size2)
            for bad in _corruptions(p):
                with pytest.raises(ProofError):
                    verify_consistency(size1, size2, bad, root1, root2)
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, p, _flip(root1, 1), root2)
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, p, root1, _flip(root2, 1))
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, p, root2, root1)
            with pytest.raises(ProofError):
                verify_consistency(size2, size1, p, root2, root1)


def test_consistency_edge_rules() -> None:
    r1, r2 = mth(LEAVES[:1]), mth(LEAVES[:2])
    verify_consistency(2, 2, [], r2, r2)
    with pytest.raises(ProofError, match="equal"):
        verify_consistency(2, 2, [], r1, r2)
    with pytest.raises(ProofError, match="not empty"):
        verify_consistency(2, 2, [r1], r2, r2)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 2, [], EMPTY_ROOT, r2)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_consistency(-1, 2, [], r1, r2)
    with pytest.raises(ValueError):
        consistency_proof(0, 3, _naive_subtree_hash)
    with pytest.raises(ValueError):
        consistency_proof(4, 3, _naive_subtree_hash)
    assert consistency_proof(3, 3, _naive_subtree_hash) == []
    with pytest.raises(ValueError):
        inclusion_proof(3, 3, _naive_subtree_hash)


def test_random_large_sizes_against_generic_functions() -> None:
    # Beyond 64 leaves: MerkleTree and the generic functions over a naive hasher agree and verify.
    tree = MerkleTree.from_leaf_hashes(LEAVES)
    rng = random.Random(6962)
    for _ in range(200):
        size2 = rng.randint(1, len(LEAVES))
        size1 = rng.randint(1, size2)
        index = rng.randrange(size2)
        p = tree.inclusion_proof(index, size2)
        assert p == inclusion_proof(index, size2, _naive_subtree_hash)
        verify_inclusion(LEAVES[index], index, size2, p, mth(LEAVES[:size2]))
        c = tree.consistency_proof(size1, size2)
        assert c == consistency_proof(size1, size2, _naive_subtree_hash)
        verify_consistency(size1, size2, c, mth(LEAVES[:size1]), mth(LEAVES[:size2]))


def test_million_leaf_tree() -> None:
    n = 1_000_000
    leaves = [hashlib.sha256(b"\x00" + i.to_bytes(4, "big")).digest() for i in range(n)]
    tree = MerkleTree.from_leaf_hashes(leaves)
    root = tree.root()
    for index in (0, 1, 524_287, 524_288, 777_777, n - 1):
        p = tree.inclusion_proof(index)
        assert len(p) <= 20  # ceil(log2(n)); shorter on the ragged right border
        verify_inclusion(leaves[index], index, n, p, root)
    for size1 in (1, 524_288, 999_999):
        verify_consistency(size1, n, tree.consistency_proof(size1), tree.root(size1), root)
    # The streaming frontier agrees with the cached tree on a prefix.
    assert tree.compact_tree(300_001).root() == root_of(leaves[:300_001]) == tree.root(300_001)


def test_module_exports() -> None:
    for name in merkle.__all__:
        assert hasattr(merkle, name)
