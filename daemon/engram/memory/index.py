"""The vector index of episodic memory: one FAISS index per namespace, a cache of SQLite.

**Which index, and why.** A namespace starts with an exact index (``IndexIDMap2`` over
``IndexFlatIP``: inner product of unit vectors is cosine similarity). Exact search is recall 1.0
and costs O(n·d) per query: a few milliseconds up to ~20k vectors of 384 dimensions, ~25 ms at
100k on two cores. From ``memory.index.hnsw_threshold`` vectors the namespace gets an HNSW graph
(``IndexHNSWSQ`` with float16 vectors, M = 16, efConstruction = 64, efSearch = max(64,
candidates)), built in the background while the exact index keeps answering. Float16 halves the
vectors' RAM (150 to 75 MB at 100k of 384 dimensions) with the same recall@10 as float32 on that
data (0.9993 at 100k in ``engram bench memory``), and builds and searches no slower. HNSW needs no training (IVF indexes do, and
their recall depends on how well the training sample matches what comes later), takes vectors
one at a time as they are remembered, and at 100k vectors answers in well under a millisecond
with recall@10 above 0.99 against exact search on clustered 384-dimensional data (``engram
bench memory`` measures it; M = 32 gains nothing measurable there and adds 20% to build time and
memory; efConstruction = 40 builds twice as fast but drops recall towards 0.99; efSearch = 64
searches in half the time of 128 with the same recall@10, 0.9997, for the 50 candidates a k = 10
recall asks, while 50 drops it to 0.993). Because
each namespace has its own index, a namespace's recall does not depend on the others' sizes, and
no search ever crosses a namespace.

**Forgetting.** The exact index removes vectors (``remove_ids``). HNSW cannot remove a node from
its graph, so a forgotten vector is overwritten with zeros in place (its data is gone at once)
and masked from every search with an ``IDSelector``; when masked nodes reach
``memory.index.rebuild_fraction`` of the graph it is rebuilt without them in the background.

**Persistence.** :meth:`VectorIndex.save` writes every namespace's index, its seq labels and the
*watermark* (the highest episode seq the index had seen) to one file, atomically (temporary
file, fsync, rename, fsync of the folder), with a SHA-256 trailer. At start the file is loaded,
checked, and reconciled with SQLite: rows missing from the index are added (mostly those above
the watermark), index entries whose rows are gone (forgotten after the save, or never
committed) are dropped. A missing, truncated or corrupt file is rebuilt from SQLite, with
progress in the log; it is never fatal.

Saving, loading and rebuilding stream, so that none of them holds a second copy of an index in
RAM: the indexes are written to the file and read from it in 1 MiB pieces (FAISS's callback
I/O; ``serialize_index`` would make two whole copies, ``deserialize_index`` one, and reading the
file whole another two), and a rebuild copies the live vectors from the old index a chunk at a
time instead of taking a snapshot of all of them. At 100k vectors of 384 dimensions each such
copy was 150 MB. The file format (version 2) therefore has the header after the blobs, whose
sizes are known only once written; version 1 files (header first) still load.

Blocking code: call from worker threads. Each namespace has a readers-writer lock: searches share
it (FAISS searches of one index are safe together), adds, removes and the swap after a rebuild
hold it alone, and a waiting writer holds off new searches so that a stream of recalls cannot
starve a remember. Different namespaces never wait for each other. A plain mutex made a recall
queue behind consolidation's batched searches: a thread that releases a ``threading.Lock`` and
takes it again at once usually wins it back, so a recall could wait through a whole batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import structlog
from fasteners import ReaderWriterLock  # type: ignore[import-untyped]  # fasteners ships no type hints
from numpy.typing import NDArray

from engram.errors import DataError
from engram.heap import release_free_memory
from engram.memory.settings import IndexSettings
from engram.storage.files import replace_durably

__all__ = ["FILE_NAME", "IndexFileError", "NamespaceIndex", "Rebuild", "VectorIndex"]

log = structlog.get_logger("engram.memory")

FILE_NAME = "vectors.idx"
_ADD_PIECE = 16  # vectors a stoppable rebuild adds between checks (HNSW: ~2-3 ms on one core)
_SWAP_BATCH = 64  # changes replayed under the write lock at the swap, at most (HNSW adds ~0.1 ms each)
_MAGIC = b"ENGRAM-VECTORS\x00\x02"  # blobs, header, header size, trailer
_MAGIC_V1 = b"ENGRAM-VECTORS\x00\x01"  # header size, header, blobs, trailer
_TRAILER = 32  # SHA-256 of everything before it
_IO_PIECE = 1 << 20  # bytes per read or write of a streamed index
_COPY_CHUNK = 4096  # vectors a rebuild copies from the old index per read lock (6 MB at 384 dimensions)

Sink = Callable[[bytes], Any]


def _threads(count: int) -> None:
    """OpenMP's thread count is per calling thread (worker threads made before a process-wide
    call keep their own), so every call into FAISS from a worker thread sets it first."""
    faiss.omp_set_num_threads(count)


class IndexFileError(DataError):
    """The index file is missing, truncated, corrupt or from another format."""


def _write_faiss(index: Any, sink: Sink) -> None:
    """Serialise a FAISS index into ``sink`` a piece at a time (no copy of it in RAM)."""

    def write(piece: bytes) -> int:
        sink(piece)
        return len(piece)

    writer = faiss.PyCallbackIOWriter(write, _IO_PIECE)
    try:
        faiss.write_index(index, writer)
    finally:
        del writer  # flushes its buffer into ``sink``


class _Blob:
    """One blob of an index file: a window of the open file, read a piece at a time."""

    def __init__(self, file: Any, offset: int, length: int) -> None:
        self._file, self._offset, self.length = file, offset, length

    def read(self) -> bytes:
        self._file.seek(self._offset)
        data = self._file.read(self.length)
        if len(data) != self.length:
            raise IndexFileError("index file blob is truncated")
        return bytes(data)

    def index(self) -> Any:
        """The FAISS index stored in the blob (its concrete class), read in pieces."""
        self._file.seek(self._offset)
        left = self.length

        def read(size: int) -> bytes:
            nonlocal left
            piece = self._file.read(min(size, left))
            left -= len(piece)
            return piece  # a short read past the blob's end makes FAISS raise

        reader = faiss.PyCallbackIOReader(read, _IO_PIECE)
        try:
            return faiss.read_index(reader)
        finally:
            del reader


def _as_i64(seqs: Iterable[int] | NDArray[Any]) -> NDArray[np.int64]:
    return np.ascontiguousarray(np.fromiter(seqs, dtype=np.int64) if not isinstance(seqs, np.ndarray) else seqs, dtype=np.int64)


def _as_f32(vectors: NDArray[Any]) -> NDArray[np.float32]:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)


class FlatSpace:
    """Exact inner-product search with removal."""

    kind: Literal["flat"] = "flat"

    def __init__(self, dim: int, index: Any = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    masked = 0

    def ids(self) -> NDArray[np.int64]:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, seqs: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        self.index.add_with_ids(vectors, seqs)

    def remove(self, seqs: NDArray[np.int64]) -> int:
        return int(self.index.remove_ids(seqs)) if len(seqs) else 0  # type: ignore[arg-type]  # the SWIG wrapper takes arrays

    def search(self, query: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        sims, labels = self.index.search(query, min(k, max(self.count, 1)))
        keep = labels[0] >= 0
        return labels[0][keep], sims[0][keep]

    def vectors(self, seqs: Sequence[int]) -> tuple[list[int], NDArray[np.float32]]:
        wanted = _as_i64(seqs)
        if not len(wanted):
            return [], np.zeros((0, self.dim), np.float32)
        try:  # all present (the common case): one call
            return wanted.tolist(), self.index.reconstruct_batch(wanted)
        except RuntimeError:  # some are not in the index (IndexIDMap2 knows its ids)
            pass
        got: list[int] = []
        rows: list[NDArray[np.float32]] = []
        for s in wanted.tolist():
            try:
                rows.append(self.index.reconstruct(int(s)))
            except RuntimeError:  # not in the index (IndexIDMap2 knows its ids)
                continue
            got.append(int(s))
        if not got:
            return [], np.zeros((0, self.dim), np.float32)
        return got, np.vstack(rows)

    def parts(self) -> dict[str, Callable[[Sink], None]]:
        """The blobs of the index file, each as a writer into a sink."""
        return {"index": lambda sink: _write_faiss(self.index, sink)}

    @classmethod
    def from_blobs(cls, dim: int, blobs: dict[str, _Blob], meta: dict[str, Any]) -> FlatSpace:
        # read_index returns the concrete class already (downcasting again would hand back a
        # second proxy while the owning one is collected)
        index = blobs["index"].index()
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise IndexFileError("flat index of the wrong type or dimension")
        return cls(dim, index)


class HnswSpace:
    """An HNSW graph; forgotten vectors are zeroed and masked (the graph cannot drop nodes)."""

    kind: Literal["hnsw"] = "hnsw"

    def __init__(self, dim: int, m: int, ef_construction: int, ef_search: int, index: Any = None,
                 labels: NDArray[np.int64] | None = None, masked: Iterable[int] = ()) -> None:
        self.dim = dim
        self.ef_search = ef_search
        if index is None:
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
        self.index = index
        n = int(index.ntotal)
        self._labels = np.empty(max(1024, n * 2), dtype=np.int64)  # label -> seq (-1: masked)
        self._n = n
        if labels is not None:
            self._labels[:n] = labels[:n]
        self._masked: set[int] = {int(m_) for m_ in masked}
        for label in self._masked:
            self._labels[label] = -1
        self._label_of = {int(s): i for i, s in enumerate(self._labels[:n]) if s >= 0}
        self._params: Any = None

    @property
    def count(self) -> int:
        return len(self._label_of)

    @property
    def masked(self) -> int:
        return len(self._masked)

    def ids(self) -> NDArray[np.int64]:
        return np.fromiter(self._label_of.keys(), dtype=np.int64, count=len(self._label_of))

    def add(self, seqs: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        n = len(seqs)
        if self._n + n > len(self._labels):
            grown = np.empty(max(len(self._labels) * 2, self._n + n), dtype=np.int64)
            grown[: self._n] = self._labels[: self._n]
            self._labels = grown
        self.index.add(vectors)
        self._labels[self._n : self._n + n] = seqs
        for i, s in enumerate(seqs.tolist()):
            self._label_of[s] = self._n + i
        self._n += n

    def remove(self, seqs: NDArray[np.int64]) -> int:
        labels = [self._label_of.pop(int(s)) for s in seqs if int(s) in self._label_of]
        if not labels:
            return 0
        storage = faiss.downcast_index(self.index.storage)  # float16 codes, or float32 in an older file
        size = int(storage.code_size)
        codes = faiss.rev_swig_ptr(storage.codes.data(), int(storage.ntotal) * size)  # type: ignore[attr-defined]  # missing from faiss's stubs
        for label in labels:
            codes[label * size : (label + 1) * size] = 0  # the vector's data is gone now (all-zero bytes: 0.0)
            self._labels[label] = -1
            self._masked.add(label)
        self._params = None
        return len(labels)

    def _search_params(self, k: int) -> Any:
        ef = max(self.ef_search, k)
        if self._params is None or self._params.efSearch != ef:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            params.efSearch = ef
            if self._masked:
                batch = faiss.IDSelectorBatch(np.fromiter(self._masked, dtype=np.int64, count=len(self._masked)))
                params.sel = faiss.IDSelectorNot(batch)
                params._keep = (batch, params.sel)  # the selectors must outlive the params
            self._params = params
        return self._params

    def search(self, query: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        k = min(k, max(self.count, 1))
        sims, labels = self.index.search(query, k, params=self._search_params(k))
        keep = labels[0] >= 0
        seqs = self._labels[labels[0][keep]]
        sims = sims[0][keep]
        live = seqs >= 0
        return seqs[live], sims[live]

    def vectors(self, seqs: Sequence[int]) -> tuple[list[int], NDArray[np.float32]]:
        got = [int(s) for s in seqs if int(s) in self._label_of]
        if not got:
            return [], np.zeros((0, self.dim), np.float32)
        labels = np.array([self._label_of[s] for s in got], dtype=np.int64)
        return got, self.index.reconstruct_batch(labels)

    def parts(self) -> dict[str, Callable[[Sink], None]]:
        """The blobs of the index file, each as a writer into a sink."""
        return {
            "index": lambda sink: _write_faiss(self.index, sink),
            "labels": lambda sink: sink(self._labels[: self._n].astype("<i8").tobytes()),
        }

    @classmethod
    def from_blobs(cls, dim: int, blobs: dict[str, _Blob], meta: dict[str, Any], settings: IndexSettings) -> HnswSpace:
        index = blobs["index"].index()
        # IndexHNSWFlat: saved before the vectors were float16. It serves as it is; the next rebuild
        # (after forgets) makes a float16 one.
        if not isinstance(index, (faiss.IndexHNSWSQ, faiss.IndexHNSWFlat)) or index.d != dim:
            raise IndexFileError("HNSW index of the wrong type or dimension")
        labels = np.frombuffer(blobs["labels"].read(), dtype="<i8").astype(np.int64)
        if len(labels) != index.ntotal:
            raise IndexFileError("HNSW labels do not match its size")
        masked = [i for i, s in enumerate(labels.tolist()) if s < 0]
        return cls(dim, settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search, index, labels, masked)


Space = FlatSpace | HnswSpace


@dataclass
class NamespaceIndex:
    name: str
    space: Space
    lock: ReaderWriterLock = field(default_factory=ReaderWriterLock)  # read: searches; write: changes
    building: bool = False  # a Rebuild holds it (set and cleared under VectorIndex._lock)
    # While building: seq -> True (added) / False (removed) since the snapshot, written under the
    # write lock, so that the swap replays what changed instead of diffing the whole index.
    pending: dict[int, bool] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.space.dim

    def note(self, seqs: Iterable[int], present: bool) -> None:
        """Record adds or removes for the rebuild in progress (caller holds the write lock)."""
        if self.building:
            for seq in seqs:
                self.pending[int(seq)] = present


class Rebuild:
    """A namespace's index rebuilt from a snapshot of its live seqs while searches and writes go
    on against the old one. Add the snapshot with :meth:`add` (in chunks: the caller may pause
    between them), then call :meth:`catch_up` until it returns True (it has swapped the new space
    in), and :meth:`close` in every case. Blocking: worker threads.

    The snapshot holds seqs only: :meth:`add` copies their vectors from the old index a chunk at
    a time (under its read lock), so that a rebuild needs the old and the new index in RAM but no
    third copy of every vector. A seq forgotten before its chunk is copied is simply missing
    from the old index then; the changes :meth:`catch_up` replays cover it either way."""

    def __init__(self, index: VectorIndex, ns: NamespaceIndex, seqs: NDArray[np.int64]) -> None:
        self._index = index
        self._ns = ns
        self._seqs = seqs
        self.total = len(seqs)
        self.new: Space = index.new_space(ns.dim, len(seqs))

    def add(self, start: int, size: int, stop: Callable[[], bool] | None = None) -> int:
        """Add snapshot vectors ``[start, start + size)`` to the new space; returns how many are
        in. With ``stop``, a few at a time, returning early (after at least one piece) once
        ``stop()`` turns true: a foreground request then shares the CPU with a few milliseconds
        of this work at most. Without, in one call (which FAISS parallelises)."""
        end = min(start + size, self.total)
        piece = _ADD_PIECE if stop is not None else _COPY_CHUNK
        done = start
        while done < end:
            if done > start and stop is not None and stop():
                break
            upto = min(done + piece, end)
            with self._ns.lock.read_lock():
                got, vectors = self._ns.space.vectors(self._seqs[done:upto].tolist())
            if got:
                self.new.add(_as_i64(got), vectors)
            done = upto
        return done

    def catch_up(self) -> bool:
        """Replay the changes made since the snapshot (or the last round) into the new space. A
        big round is copied without holding the write lock and returns False; a small one runs
        under the write lock and swaps the new space in (True), so writers never wait long."""
        ns = self._ns
        with ns.lock.read_lock():
            pending = self._take()
        if len(pending) > _SWAP_BATCH:
            self._apply(pending, locked=False)  # into the new space, which nobody searches yet
            return False
        with ns.lock.write_lock():
            self._apply(pending, locked=True)
            self._apply(self._take(), locked=True)
            ns.space = self.new
        with self._index._lock:
            self._index.changes += 1
        return True

    def close(self) -> None:
        with self._index._lock:
            self._ns.building = False
            self._ns.pending.clear()

    def _take(self) -> dict[int, bool]:
        """The pending changes, cleared (caller holds a lock)."""
        pending, self._ns.pending = self._ns.pending, {}
        return pending

    def _apply(self, pending: dict[int, bool], locked: bool) -> None:
        """Every seq touched out of the new space first (removed, or re-added after a remove),
        then the live ones back in, their vectors copied from the current space a chunk at a time
        (under its read lock unless the caller holds the write lock). A change made meanwhile is
        pending again, for the next round: a seq gone by the time its chunk is copied is skipped."""
        if not pending:
            return
        self.new.remove(_as_i64(list(pending)))
        present = [s for s, there in pending.items() if there]
        for start in range(0, len(present), _COPY_CHUNK):
            part = present[start : start + _COPY_CHUNK]
            if locked:
                got, vectors = self._ns.space.vectors(part)
            else:
                with self._ns.lock.read_lock():
                    got, vectors = self._ns.space.vectors(part)
            if got:
                self.new.add(_as_i64(got), vectors)


class VectorIndex:
    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self._spaces: dict[str, NamespaceIndex] = {}
        self._lock = threading.Lock()  # guards the dict and the counters
        self.watermark = 0  # highest seq ever added
        self.saved_watermark: int | None = None
        self.saved_at: float | None = None
        self.changes = 0  # adds and removes since the last save
        self.abort = threading.Event()  # set at shutdown: a build in progress gives up between chunks

    # --- namespaces --------------------------------------------------------------------------------

    def get(self, namespace: str) -> NamespaceIndex | None:
        return self._spaces.get(namespace)

    def namespaces(self) -> list[str]:
        return sorted(self._spaces)

    def dim(self, namespace: str) -> int | None:
        ns = self._spaces.get(namespace)
        return ns.dim if ns is not None else None

    def drop(self, namespace: str) -> None:
        with self._lock:
            if self._spaces.pop(namespace, None) is not None:
                self.changes += 1

    def _space_for(self, namespace: str, dim: int) -> NamespaceIndex:
        with self._lock:
            ns = self._spaces.get(namespace)
            if ns is None:
                ns = self._spaces[namespace] = NamespaceIndex(namespace, FlatSpace(dim))
            return ns

    def _hnsw(self, dim: int) -> HnswSpace:
        s = self.settings
        return HnswSpace(dim, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search)

    # --- changes -----------------------------------------------------------------------------------

    def add(self, namespace: str, seqs: Sequence[int], vectors: NDArray[np.float32]) -> None:
        if not len(seqs):
            return
        _threads(self.settings.build_threads or os.cpu_count() or 1)  # adds come in batches
        ids, vecs = _as_i64(seqs), _as_f32(vectors)
        ns = self._space_for(namespace, vecs.shape[1])
        with ns.lock.write_lock():
            if vecs.shape[1] != ns.dim:
                raise ValueError(f"namespace {namespace!r} holds {ns.dim}-dimensional vectors, got {vecs.shape[1]}")
            ns.space.add(ids, vecs)
            ns.note(ids.tolist(), True)
        with self._lock:
            self.watermark = max(self.watermark, int(ids.max()))
            self.changes += len(ids)

    def remove(self, namespace: str, seqs: Sequence[int]) -> int:
        ns = self._spaces.get(namespace)
        if ns is None or not len(seqs):
            return 0
        with ns.lock.write_lock():
            removed = ns.space.remove(_as_i64(seqs))
            ns.note(seqs, False)
        with self._lock:
            self.changes += removed
        return removed

    # --- reads ---------------------------------------------------------------------------------------

    def count(self, namespace: str) -> int:
        ns = self._spaces.get(namespace)
        return ns.space.count if ns is not None else 0

    def ids(self, namespace: str) -> NDArray[np.int64]:
        ns = self._spaces.get(namespace)
        if ns is None:
            return np.zeros(0, np.int64)
        with ns.lock.read_lock():
            return ns.space.ids()

    def search(self, namespace: str, query: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        ns = self._spaces.get(namespace)
        if ns is None or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        _threads(self.settings.threads)
        with ns.lock.read_lock():
            if ns.space.count == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            return ns.space.search(_as_f32(query.reshape(1, -1)), k)

    def vectors(self, namespace: str, seqs: Sequence[int]) -> tuple[list[int], NDArray[np.float32]]:
        ns = self._spaces.get(namespace)
        if ns is None:
            return [], np.zeros((0, 0), np.float32)
        with ns.lock.read_lock():
            return ns.space.vectors(seqs)

    def stats(self, namespace: str) -> dict[str, Any]:
        ns = self._spaces.get(namespace)
        if ns is None:
            return {"kind": "none", "dim": None, "vectors": 0, "masked": 0, "building": False}
        return {"kind": ns.space.kind, "dim": ns.dim, "vectors": ns.space.count, "masked": ns.space.masked, "building": ns.building}

    # --- maintenance ----------------------------------------------------------------------------------

    def maintenance_due(self, namespace: str) -> str | None:
        """'convert' (exact index grew past the threshold), 'rebuild' (too many masked nodes) or None."""
        ns = self._spaces.get(namespace)
        if ns is None or ns.building:
            return None
        space = ns.space
        if isinstance(space, FlatSpace):
            return "convert" if space.count >= self.settings.hnsw_threshold else None
        total = space.count + space.masked
        if space.masked and space.masked >= self.settings.rebuild_fraction * total:
            return "rebuild" if space.count >= self.settings.hnsw_threshold else "shrink"
        return None

    def new_space(self, dim: int, count: int) -> Space:
        """The kind of space ``count`` vectors get: HNSW from the threshold up, exact below it."""
        if count >= self.settings.hnsw_threshold:
            s = self.settings
            return HnswSpace(dim, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search)
        return FlatSpace(dim)

    def start_rebuild(self, namespace: str) -> Rebuild | None:
        """Claim the namespace for a rebuild and snapshot its live vectors; None when it has no
        index or another rebuild holds it. The caller must :meth:`Rebuild.close` it."""
        ns = self._spaces.get(namespace)
        if ns is None:
            return None
        with self._lock:
            if ns.building:
                return None
            ns.building = True
        try:
            with ns.lock.read_lock():
                seqs = np.sort(ns.space.ids())
        except BaseException:
            with self._lock:
                ns.building = False
            raise
        return Rebuild(self, ns, seqs)

    def rebuild(self, namespace: str, progress: Callable[[int, int], None] | None = None, chunk: int = 5000) -> str | None:
        """Memory's own maintenance: rebuild a namespace's index when :meth:`maintenance_due` says
        so (HNSW, or exact when it shrank below the threshold), while searches and writes go on
        against the old one. Returns the new kind, None if nothing was due or it was stopped."""
        if self.maintenance_due(namespace) is None:
            return None
        _threads(self.settings.build_threads or os.cpu_count() or 1)
        job = self.start_rebuild(namespace)
        if job is None:
            return None
        try:
            done = 0
            while done < job.total:
                if self.abort.is_set():
                    return None  # the old index stays; the build is due again at the next start
                done = job.add(done, chunk)
                if progress is not None:
                    progress(done, job.total)
            while not job.catch_up():
                pass
        finally:
            job.close()
        release_free_memory()  # the old index is gone: its pages would stay in RSS, free, until trimmed
        return job.new.kind

    def reconcile(self, namespace: str, seqs: NDArray[np.int64], dim: int | None,
                  fetch: Callable[[Sequence[int]], Iterable[tuple[list[int], NDArray[np.float32]]]],
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Make the namespace's index hold exactly ``seqs`` (the rows in SQLite): add the missing
        ones (their vectors from ``fetch``), drop the others. Returns (added, dropped)."""
        ns = self._spaces.get(namespace)
        if ns is not None and dim is not None and ns.dim != dim:
            log.warning("vector index dimension differs from the stored vectors; rebuilding it",
                        namespace=namespace, index_dim=ns.dim, stored_dim=dim)
            self.drop(namespace)
            ns = None
        have = self.ids(namespace)
        missing = np.setdiff1d(seqs, have, assume_unique=True)
        extra = np.setdiff1d(have, seqs, assume_unique=True)
        dropped = self.remove(namespace, extra.tolist()) if len(extra) else 0
        added = 0
        for got, vectors in fetch(missing.tolist()):
            self.add(namespace, got, vectors)
            added += len(got)
            if progress is not None:
                progress(added, len(missing))
        if not len(seqs):
            self.drop(namespace)
        return added, dropped

    # --- persistence ----------------------------------------------------------------------------------

    def save(self, path: Path) -> int:
        """Write every namespace's index and the watermark to ``path`` atomically; returns bytes
        written. Each index is streamed into the file under its namespace's read lock (searches go
        on; adds wait for it, as they waited for the copy made before)."""
        with self._lock:
            watermark, changes = self.watermark, self.changes
            spaces = list(self._spaces.values())
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        digest = hashlib.sha256()
        written = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:

                def sink(piece: bytes) -> None:
                    nonlocal written
                    out.write(piece)
                    digest.update(piece)
                    written += len(piece)

                sink(_MAGIC)
                entries = []
                for ns in spaces:
                    with ns.lock.read_lock():
                        kind, dim = ns.space.kind, ns.dim
                        meta: dict[str, Any] = {"name": ns.name, "kind": kind, "dim": dim, "blobs": {}}
                        for key, write in ns.space.parts().items():
                            offset = written
                            write(sink)
                            meta["blobs"][key] = [offset, written - offset]
                    entries.append(meta)
                header = json.dumps(
                    {"version": 2, "watermark": watermark, "saved_at": time.time(), "namespaces": entries}, separators=(",", ":")
                ).encode()
                sink(header)
                sink(len(header).to_bytes(8, "little"))
                out.write(digest.digest())
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        replace_durably(tmp, path)
        with self._lock:
            self.saved_watermark, self.saved_at = watermark, time.time()
            self.changes -= changes
        return written + _TRAILER

    def load(self, path: Path) -> int:
        """Replace the in-memory indexes with the file's; returns its watermark.
        Raises :class:`IndexFileError` when the file cannot be used."""
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise IndexFileError(f"{path} does not exist") from None
        except OSError as exc:
            raise IndexFileError(f"{path} cannot be read: {exc.strerror}") from None
        with file:
            try:
                spaces, header = self._read(file, path)
                watermark, saved_at = int(header["watermark"]), float(header.get("saved_at", 0.0))
            except IndexFileError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed header or a FAISS blob it cannot read
                raise IndexFileError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from None
        with self._lock:
            self._spaces = spaces
            self.watermark = watermark
            self.saved_watermark = watermark
            self.saved_at = saved_at
            self.changes = 0
        release_free_memory()  # the read pieces and any indexes replaced
        return watermark

    def _read(self, file: Any, path: Path) -> tuple[dict[str, NamespaceIndex], dict[str, Any]]:
        """The namespaces and the header of an open index file, checked against its trailer
        first (the file is read twice, a piece at a time: never whole into RAM)."""
        size = os.fstat(file.fileno()).st_size
        magic = file.read(len(_MAGIC))
        if size < len(_MAGIC) + 8 + _TRAILER or magic not in (_MAGIC, _MAGIC_V1):
            raise IndexFileError(f"{path} is not an engram vector index (or is truncated)")
        digest = hashlib.sha256(magic)
        left = size - _TRAILER - len(magic)
        while left > 0:
            piece = file.read(min(_IO_PIECE, left))
            if not piece:
                raise IndexFileError(f"{path} is truncated")
            digest.update(piece)
            left -= len(piece)
        if digest.digest() != file.read(_TRAILER):
            raise IndexFileError(f"{path} is corrupt (checksum mismatch)")
        if magic == _MAGIC_V1:  # header first; blob offsets count from its end
            file.seek(len(magic))
            length = int.from_bytes(file.read(8), "little")
            base = len(magic) + 8 + length
            end = size - _TRAILER
        else:  # header last; blob offsets count from the start of the file
            file.seek(size - _TRAILER - 8)
            length = int.from_bytes(file.read(8), "little")
            base = 0
            end = size - _TRAILER - 8 - length
            if end < len(magic):
                raise IndexFileError(f"{path} has a header larger than itself")
            file.seek(end)
        header = json.loads(file.read(length))
        spaces: dict[str, NamespaceIndex] = {}
        for meta in header["namespaces"]:
            blobs = {}
            for key, (off, count) in meta["blobs"].items():
                if off < 0 or count < 0 or base + off + count > end:
                    raise IndexFileError(f"{path}: blob {key!r} lies outside the file")
                blobs[key] = _Blob(file, base + off, count)
            dim = int(meta["dim"])
            if meta["kind"] == "flat":
                space: Space = FlatSpace.from_blobs(dim, blobs, meta)
            elif meta["kind"] == "hnsw":
                space = HnswSpace.from_blobs(dim, blobs, meta, self.settings)
            else:
                raise IndexFileError(f"unknown index kind {meta['kind']!r}")
            spaces[str(meta["name"])] = NamespaceIndex(str(meta["name"]), space)
        return spaces, header
