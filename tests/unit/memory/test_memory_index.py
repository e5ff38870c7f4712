"""The per-namespace FAISS index: exact and HNSW search, forgetting, persistence, reconciliation."""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from engram.memory.index import HnswSpace, IndexFileError, NamespaceIndex, VectorIndex
from engram.memory.settings import IndexSettings


def unit(rng: np.random.Generator, n: int, dim: int, centres: int = 50, noise: float = 1.0) -> np.ndarray:
    """Unit vectors scattered around random centres, like embeddings of texts on a few topics."""
    base = np.random.default_rng(0).normal(size=(centres, dim)).astype(np.float32)
    rows = base[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1)


def test_exact_search_add_remove(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings())
    vectors = unit(rng, 200, 16)
    index.add("a", list(range(1, 201)), vectors)
    seqs, sims = index.search("a", vectors[9], 3)
    assert seqs[0] == 10 and sims[0] == pytest.approx(1.0, abs=1e-5)
    assert index.stats("a")["kind"] == "flat" and index.count("a") == 200 and index.watermark == 200
    assert index.remove("a", [10, 999]) == 1
    assert 10 not in index.search("a", vectors[9], 5)[0]
    got, _ = index.vectors("a", [10, 11])
    assert got == [11]
    assert index.search("b", vectors[0], 3)[0].size == 0  # another namespace knows nothing of these


def test_hnsw_conversion_keeps_writes_made_during_the_build(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings(hnsw_threshold=500))
    vectors = unit(rng, 1400, 32)
    index.add("a", list(range(1, 601)), vectors[:600])
    assert index.maintenance_due("a") == "convert"

    def during(done: int, total: int) -> None:  # the build runs while others write and forget
        if done == total:  # more than one swap round's worth, so they are replayed in rounds
            index.add("a", list(range(601, 1401)), vectors[600:])
            index.remove("a", [1, 2, 700])

    assert index.rebuild("a", progress=during, chunk=200) == "hnsw"
    assert index.stats("a")["kind"] == "hnsw" and index.count("a") == 1397
    assert index.search("a", vectors[1250], 1)[0][0] == 1251
    assert 1 not in index.search("a", vectors[0], 10)[0] and 700 not in index.search("a", vectors[699], 10)[0]


def test_a_rebuild_keeps_an_episode_forgotten_and_restored_during_it(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings(hnsw_threshold=100))
    vectors = unit(rng, 300, 16)
    index.add("a", list(range(1, 301)), vectors)
    job = index.start_rebuild("a")
    assert job is not None and index.start_rebuild("a") is None  # one rebuild at a time
    try:
        job.add(0, job.total)
        index.remove("a", [5, 6])  # forgotten during the build ...
        index.add("a", [5], vectors[4:5])  # ... and 5 restored (a rolled-back archive)
        assert job.catch_up()
    finally:
        job.close()
    assert index.stats("a")["kind"] == "hnsw" and index.count("a") == 299 and not index.get("a").building
    assert index.search("a", vectors[4], 1)[0][0] == 5
    assert 6 not in index.search("a", vectors[5], 10)[0]


def test_a_stoppable_rebuild_adds_a_piece_then_returns(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings(hnsw_threshold=100))
    vectors = unit(rng, 300, 16)
    index.add("a", list(range(1, 301)), vectors)
    job = index.start_rebuild("a")
    try:
        first = job.add(0, 200, stop=lambda: True)  # a request is waiting: one piece, then out
        assert 0 < first < 200 and job.new.count == first
        assert job.add(first, 300) == 300  # nobody waiting: the rest in one go
        assert job.catch_up()
    finally:
        job.close()
    assert index.count("a") == 300 and index.search("a", vectors[250], 1)[0][0] == 251


def test_searches_share_the_namespace_lock_and_changes_wait_for_them(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings())
    vectors = unit(rng, 50, 8)
    index.add("a", list(range(1, 51)), vectors)
    searched, added = threading.Event(), threading.Event()
    with index.get("a").lock.read_lock():  # a long batch of searches elsewhere
        searcher = threading.Thread(target=lambda: (index.search("a", vectors[0], 3), searched.set()))
        writer = threading.Thread(target=lambda: (index.add("a", [99], vectors[:1]), added.set()))
        searcher.start()
        assert searched.wait(5)  # a recall does not queue behind it
        writer.start()
        assert not added.wait(0.2)  # a remember does
    assert added.wait(5)
    searcher.join()
    writer.join()
    assert 99 in index.ids("a")


def test_forgotten_hnsw_vectors_are_zeroed_and_never_returned(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings(hnsw_threshold=100, rebuild_fraction=0.5))
    vectors = unit(rng, 300, 16)
    index.add("a", list(range(1, 301)), vectors)
    index.rebuild("a")
    forgotten = list(range(1, 101))
    index.remove("a", forgotten)
    space = index.get("a").space
    storage = faiss.downcast_index(space.index.storage)
    codes = faiss.rev_swig_ptr(storage.codes.data(), storage.ntotal * storage.code_size).reshape(storage.ntotal, -1)
    assert np.count_nonzero(codes.any(axis=1) == 0) == 100  # the data is gone, not just hidden
    for q in vectors[:100]:
        assert not set(index.search("a", q, 20)[0].tolist()) & set(forgotten)
    assert index.stats("a")["masked"] == 100 and index.maintenance_due("a") is None
    index.remove("a", list(range(101, 151)))
    assert index.maintenance_due("a") == "rebuild"
    index.rebuild("a")
    assert index.stats("a") == {"kind": "hnsw", "dim": 16, "vectors": 150, "masked": 0, "building": False}


def test_hnsw_recall_at_10_against_exact_search(rng: np.random.Generator) -> None:
    n, dim = 20_000, 64
    index = VectorIndex(IndexSettings(hnsw_threshold=1000))
    vectors = unit(rng, n, dim, centres=200, noise=0.6)
    index.add("a", list(range(n)), vectors)
    index.rebuild("a")
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    queries = unit(np.random.default_rng(9), 200, dim, centres=200, noise=0.6)
    _, truth = exact.search(queries, 10)
    recall = np.mean([len(set(index.search("a", q, 10)[0].tolist()) & set(t.tolist())) / 10 for q, t in zip(queries, truth)])
    assert recall >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_and_load_round_trip(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    settings = IndexSettings(hnsw_threshold=100)
    index = VectorIndex(settings)
    vectors = unit(rng, 150, 8)
    index.add("a", list(range(1, 151)), vectors)
    index.add("b", [200], unit(rng, 1, 4))
    if kind == "hnsw":
        index.rebuild("a")
    index.remove("a", [5])
    path = tmp_path / "vectors.idx"
    index.save(path)
    assert index.changes == 0 and index.saved_watermark == 200
    loaded = VectorIndex(settings)
    assert loaded.load(path) == 200
    assert loaded.stats("a")["kind"] == kind and loaded.count("a") == 149 and loaded.dim("b") == 4
    assert loaded.search("a", vectors[9], 1)[0][0] == 10
    assert 5 not in loaded.ids("a")


def test_a_float32_hnsw_file_still_loads_and_turns_float16_at_its_rebuild(tmp_path: Path, rng: np.random.Generator) -> None:
    """HNSW files saved before the vectors were stored as float16 hold an IndexHNSWFlat."""
    settings = IndexSettings(hnsw_threshold=100, rebuild_fraction=0.1)
    index = VectorIndex(settings)
    vectors = unit(rng, 200, 8)
    old = HnswSpace(8, 16, 64, 64, index=faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    old.add(np.arange(1, 201, dtype=np.int64), vectors)
    index._spaces["a"] = NamespaceIndex("a", old)
    path = tmp_path / "vectors.idx"
    index.save(path)
    loaded = VectorIndex(settings)
    loaded.load(path)
    space = loaded.get("a").space
    assert isinstance(space.index, faiss.IndexHNSWFlat) and loaded.search("a", vectors[9], 1)[0][0] == 10
    assert faiss.downcast_index(space.index.storage).code_size == 8 * 4  # float32
    loaded.remove("a", list(range(1, 31)))
    storage = faiss.downcast_index(space.index.storage)
    data = faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * 8).reshape(-1, 8)
    assert np.count_nonzero(np.abs(data).sum(axis=1) == 0) == 30
    assert loaded.rebuild("a") == "hnsw"
    rebuilt = loaded.get("a").space.index
    assert isinstance(rebuilt, faiss.IndexHNSWSQ) and faiss.downcast_index(rebuilt.storage).code_size == 8 * 2
    assert loaded.search("a", vectors[99], 1)[0][0] == 100 and loaded.count("a") == 170


def test_corrupt_truncated_or_missing_files_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings())
    index.add("a", [1, 2], unit(rng, 2, 8))
    path = tmp_path / "vectors.idx"
    index.save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.idx").write_bytes(bytes(data))
    (tmp_path / "short.idx").write_bytes(path.read_bytes()[:40])
    for name in ("flipped.idx", "short.idx", "missing.idx"):
        with pytest.raises(IndexFileError):
            VectorIndex(IndexSettings()).load(tmp_path / name)


def test_reconcile_adds_missing_rows_and_drops_entries_without_rows(rng: np.random.Generator) -> None:
    index = VectorIndex(IndexSettings())
    vectors = unit(rng, 10, 8)
    index.add("a", [1, 2, 3, 4], vectors[:4])  # 3 and 4 were forgotten after the save

    def fetch(seqs):
        wanted = [s for s in seqs]
        yield wanted, vectors[[s - 1 for s in wanted]]

    added, dropped = index.reconcile("a", np.array([1, 2, 5, 6], dtype=np.int64), 8, fetch)
    assert (added, dropped) == (2, 2)
    assert sorted(index.ids("a").tolist()) == [1, 2, 5, 6]
    index.reconcile("a", np.array([], dtype=np.int64), 8, fetch)
    assert index.namespaces() == []


def test_a_version_1_file_still_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    """Version 1 files put the header before the blobs; files saved before version 2 still load."""
    import hashlib
    import json

    index = VectorIndex(IndexSettings())
    vectors = unit(rng, 20, 8)
    index.add("a", list(range(1, 21)), vectors)
    blob = faiss.serialize_index(index.get("a").space.index).tobytes()
    header = json.dumps({"version": 1, "watermark": 20, "saved_at": 1.0,
                         "namespaces": [{"name": "a", "kind": "flat", "dim": 8, "blobs": {"index": [0, len(blob)]}}]}).encode()
    body = b"ENGRAM-VECTORS\x00\x01" + len(header).to_bytes(8, "little") + header + blob
    path = tmp_path / "v1.idx"
    path.write_bytes(body + hashlib.sha256(body).digest())
    loaded = VectorIndex(IndexSettings())
    assert loaded.load(path) == 20
    assert loaded.count("a") == 20 and loaded.search("a", vectors[3], 1)[0][0] == 4
