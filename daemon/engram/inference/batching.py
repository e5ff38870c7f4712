"""Dynamic batching: concurrent requests to one model coalesced into one run, then split back.

A :class:`Batcher` is a bounded queue and one task. The task takes the first waiting request,
gathers the others already waiting, and waits up to ``max_queue_delay_us`` for more while it has
fewer than it expects. It expects as many as were running and waiting when the last batch
ended: an estimate of how many clients are sending (those whose requests are in a batch running
now will not come meanwhile). A lone client never waits; eight clients in lock-step are not
left to settle into two alternating groups of four. While another run slot is free, a batch takes
only its share of the requests waiting and leaves the rest to a batch of its own that starts at
once: on two cores, eight requests waiting run as two batches of four side by side, instead of
one batch of eight in one thread while the other core idles. A batch stops at ``max_batch`` rows
and runs in a worker thread. The queue holds ``queue_size`` requests; one more is refused at once
with :class:`~engram.errors.Overloaded` (-32003) instead of waiting without bound.

The queue is served earliest deadline first (:class:`~engram.deadlines.EdfQueue`): a request
with a deadline (``RequestDeadline``) goes before those due later, requests without one are
due ``undated_s`` after they came, and equals go in order of arrival; with ``edf=False`` it is
first come, first served. A request whose deadline has passed by the time its batch is taken
or runs is answered -32004 ``deadline_missed`` instead of running; while it waits, its
deadline says so (``waiting_in``), so that the request chain, cancelling it at the deadline,
answers the same.

Up to ``parallel_runs`` batches run at once, each in its own worker thread on the same session
(ONNX Runtime's ``run`` may be called from several threads). A batch is only gathered once a run
slot is free, so while every slot is busy the queue fills up and the next batch takes all of it.
On a small CPU a second run at one intra-op thread uses the second core better than a second
intra-op thread inside one run: at a batch of a few short texts, the operators are too small to
split well, and a thread that waits for its sibling either spins (burning the core) or sleeps.

What a batch *is* depends on the request type:

* tensors (:func:`run_tensor_batch`): requests whose inputs agree on names, dtypes and every
  dimension but the first are concatenated along dimension 0; others run on their own. Only
  models whose inputs and outputs all share one symbolic first dimension are batched at all
  (:func:`is_batchable`), so that row *i* of an output belongs to row *i* of the inputs. If a
  batched run fails, each request is run again alone, so one bad request fails only itself.
* texts (:func:`run_embed_batch`): each request's texts are tokenized on their own before the
  request joins a batch (a text the tokenizer refuses fails only its request); the texts of all
  requests are then sorted by length, cut into padded batches of ``max_batch`` and the vectors
  handed back in order. If a run fails, each request is run again alone.

Whatever the request type, a batch whose run raises is run again one request at a time
(:meth:`Batcher._run_isolating`): the requests of one batch come from different clients, and one
client's bad input must not fail the others' requests.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import numpy as np
import structlog
from tokenizers import Encoding

from engram.deadlines import EdfQueue, QueueFull, RequestDeadline
from engram.errors import InternalSignal, Overloaded, RPCError, Unavailable
from engram.inference.manifest import Manifest
from engram.inference.sessions import LoadedModel, run_session
from engram.inference.text_encoder import TextEncoder, padding_aware_buckets

__all__ = [
    "Batcher",
    "BatcherClosed",
    "TensorRequest",
    "is_batchable",
    "run_embed_batch",
    "run_tensor_batch",
]

log = structlog.get_logger("engram.inference")

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(InternalSignal):
    """The model was unloaded between lookup and submission; look it up again."""


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    rows: int
    deadline: RequestDeadline | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: R | None = None
    error: BaseException | None = None
    cancelled: bool = False


RunBatch = Callable[[list[T]], list[Any]]  # one result or exception per item, in order
Observe = Callable[[int, int, float], None]  # (requests, rows, seconds) of each batch


class Batcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_delay_s: float,
        queue_size: int,
        limiter: anyio.CapacityLimiter,
        observe: Observe | None = None,
        parallel_runs: int = 1,
        edf: bool = True,
        undated_s: float = 60.0,
    ) -> None:
        if parallel_runs < 1:
            raise ValueError(f"parallel_runs must be >= 1, not {parallel_runs}")
        self.name = name
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._slots = anyio.Semaphore(parallel_runs)
        self._running = 0  # requests in the batches running now
        self._max_delay = max_delay_s
        self._limiter = limiter
        self._observe = observe
        self._queue: EdfQueue[_Pending[T, R]] = EdfQueue(queue_size, edf=edf, undated_s=undated_s)
        self._expected = 1
        self._carry: _Pending[T, R] | None = None
        self.closed = False
        self.batches = 0
        self.requests = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, item: T, rows: int, deadline: RequestDeadline | None = None) -> R:
        if self.closed:
            raise BatcherClosed(self.name)
        if deadline is not None:
            # A deadline that passed while the request was on its way here (tokenizing, in a
            # worker thread that could not be interrupted) ends it here, as a request that was
            # running: the request chain's cancel scope, if there is one, says so now.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if deadline.passed():
                raise deadline.missed(WAITING_IN)
        pending: _Pending[T, R] = _Pending(item, rows, deadline)
        try:
            self._queue.put_nowait(pending, deadline.expires if deadline is not None else None)
        except QueueFull:
            raise Overloaded(
                f"model {self.name!r} has {self.depth} requests waiting (inference.batching.queue_size); retry later",
                reason="queue_full",
                model=self.name,
            ) from None
        except anyio.ClosedResourceError:
            raise BatcherClosed(self.name) from None
        if deadline is not None:
            deadline.waiting_in = WAITING_IN  # until its batch runs (_execute)
        try:
            await pending.done.wait()
        except BaseException:
            # Skipped if it has not been picked up yet. ``waiting_in`` stays as it is: cancelled
            # at its deadline, the request is answered by what it was doing then.
            pending.cancelled = True
            raise
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def close(self) -> None:
        """Accept nothing more; what is queued still runs, then :meth:`run` returns."""
        self.closed = True
        self._queue.close()

    async def run(self) -> None:
        ended = False
        try:
            async with anyio.create_task_group() as runs:
                while not ended:
                    # Take requests only once a run can start: while all runs are busy, what
                    # arrives waits in the queue and joins the next batch instead of one of its own.
                    await self._slots.acquire()
                    try:
                        first = self._carry
                        self._carry = None
                        if first is None:
                            try:
                                first = await self._queue.get()
                            except anyio.EndOfStream:
                                self._slots.release()
                                return
                        batch, ended = await self._collect(first)
                    except BaseException:
                        self._slots.release()
                        raise
                    runs.start_soon(self._execute_and_release, batch)
        finally:
            self._fail_leftovers()

    async def _execute_and_release(self, batch: list[_Pending[T, R]]) -> None:
        self._running += len(batch)
        try:
            await self._execute(batch)
        finally:
            # The requests of the batches running until now (whose clients are likely to send
            # again at once) and those that arrived meanwhile: an estimate of how many clients
            # there are, and so of how much company the next batches may wait for.
            self._expected = self._running + self.depth + (self._carry is not None)
            self._running -= len(batch)
            self._slots.release()

    async def _collect(self, first: _Pending[T, R]) -> tuple[list[_Pending[T, R]], bool]:
        batch, rows = [first], first.rows
        deadline = anyio.current_time() + self._max_delay
        while rows < self._max_batch:
            free = self._slots.value  # runs that could start besides this one
            if free and len(batch) * (free + 1) >= len(batch) + self.depth:
                break  # this batch's share: the rest starts at once in a run of its own
            try:
                pending = self._queue.get_nowait()
            except anyio.EndOfStream:
                return batch, True
            except anyio.WouldBlock:
                remaining = deadline - anyio.current_time()
                if len(batch) + self._running >= self._expected or remaining <= 0:
                    break
                waited: _Pending[T, R] | None = None
                with anyio.move_on_after(remaining):
                    try:
                        waited = await self._queue.get()
                    except anyio.EndOfStream:
                        return batch, True
                if waited is None:  # nobody came in time
                    break
                pending = waited
            if pending.cancelled or _expired(pending):
                continue
            if rows + pending.rows > self._max_batch:
                self._carry = pending
                break
            batch.append(pending)
            rows += pending.rows
        return batch, False

    async def _execute(self, batch: list[_Pending[T, R]]) -> None:
        # Whose deadline passed while the batch gathered does not run; the others stop waiting.
        live = [p for p in batch if not p.cancelled and not _expired(p)]
        if not live:
            return
        for p in live:
            if p.deadline is not None:
                p.deadline.waiting_in = None
        started = anyio.current_time()
        try:
            results = await anyio.to_thread.run_sync(self._run_isolating, [p.item for p in live], limiter=self._limiter)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else Unavailable("the daemon is stopping", reason="cancelled")
            for p in live:
                p.error = error
                p.done.set()
            if isinstance(exc, Exception):
                log.exception("batch failed", model=self.name, requests=len(live))
                return
            raise
        self.batches += 1
        self.requests += len(live)
        if self._observe is not None:
            self._observe(len(live), sum(p.rows for p in live), anyio.current_time() - started)
        for p, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                p.error = result
            else:
                p.result = result
            p.done.set()

    def _run_isolating(self, items: list[T]) -> list[Any]:
        """Run ``items`` as one batch; if the batch as a whole fails, run each alone.

        The items come from different clients, and one of them may hold an input that makes the
        run fail (the model or the tokenizer refuses it): run alone, it fails only its own
        request and the others get their results. A batch of one is left to fail as it does.
        """
        try:
            return self._run_batch(items)
        except Exception:
            if len(items) == 1:
                raise
            log.warning("batch failed; running its requests one by one", model=self.name, requests=len(items))
            return [self._run_alone(item) for item in items]

    def _run_alone(self, item: T) -> Any:
        try:
            (result,) = self._run_batch([item])
        except Exception as exc:
            return exc
        return result

    def _fail_leftovers(self) -> None:
        leftovers = [self._carry] if self._carry is not None else []
        self._queue.close()
        leftovers += self._queue.drain()
        for p in leftovers:
            p.error = BatcherClosed(self.name)
            p.done.set()


WAITING_IN = "batcher"  # RequestDeadline.waiting_in while a request waits in a batcher's queue


def _expired(pending: _Pending[Any, Any]) -> bool:
    """Whether ``pending``'s deadline has passed; if so it is answered ``deadline_missed``."""
    if pending.deadline is None or not pending.deadline.passed():
        return False
    pending.error = pending.deadline.missed(WAITING_IN)
    pending.done.set()
    return True


# --- tensors ----------------------------------------------------------------------------------------


def is_batchable(manifest: Manifest) -> bool:
    """Whether every input and output is a tensor whose first dimension is one shared symbol."""
    specs = [*manifest.inputs, *manifest.outputs]
    if not manifest.inputs or not manifest.outputs:
        return False
    symbols = set()
    for spec in specs:
        if spec.kind != "tensor" or spec.dtype is None or not spec.shape:
            return False
        symbols.add(spec.shape[0])
    (symbol, *others) = symbols
    return not others and isinstance(symbol, str)


@dataclass(eq=False)
class TensorRequest:
    feed: dict[str, np.ndarray]
    outputs: tuple[str, ...]

    @property
    def rows(self) -> int:
        first = next(iter(self.feed.values()))
        return int(first.shape[0]) if first.ndim else 1

    def key(self) -> Hashable:
        layout = tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in self.feed.items()))
        return layout, self.outputs


def _run_alone(loaded: LoadedModel, request: TensorRequest) -> dict[str, np.ndarray] | Exception:
    try:
        return run_session(loaded.session, loaded.manifest, request.feed, list(request.outputs), loaded.exotic)
    except RPCError as exc:
        return exc


def run_tensor_batch(loaded: LoadedModel, requests: Sequence[TensorRequest]) -> list[Any]:
    """Results (or exceptions) of ``requests``, batched where their layouts agree."""
    results: list[Any] = [None] * len(requests)
    groups: dict[Hashable, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.key(), []).append(index)
    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = _run_alone(loaded, requests[indices[0]])
            continue
        members = [requests[i] for i in indices]
        split = _run_together(loaded, members)
        if split is None:
            for i in indices:
                results[i] = _run_alone(loaded, requests[i])
        else:
            for i, part in zip(indices, split, strict=True):
                results[i] = part
    loaded.runs += len(groups)
    return results


def _run_together(loaded: LoadedModel, members: list[TensorRequest]) -> list[dict[str, np.ndarray]] | None:
    rows = [m.rows for m in members]
    feed = {name: np.concatenate([m.feed[name] for m in members], axis=0) for name in members[0].feed}
    outputs = list(members[0].outputs)
    try:
        out = run_session(loaded.session, loaded.manifest, feed, outputs, loaded.exotic)
    except RPCError:
        return None  # run each alone: the error then belongs to the request that caused it
    total = sum(rows)
    if any(not value.ndim or value.shape[0] != total for value in out.values()):
        return None
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(value, bounds, axis=0) for name, value in out.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(members))]


# --- texts -------------------------------------------------------------------------------------------


def embed_feed(manifest: Manifest, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {spec.name for spec in manifest.inputs}
    return {name: value for name, value in encoded.items() if name in names}


def run_embed_batch(
    loaded: LoadedModel, encoder: TextEncoder, max_batch: int, requests: Sequence[Sequence[Encoding]]
) -> list[Any]:
    """Per request (its texts tokenized by :meth:`TextEncoder.tokenize`): its vectors and the
    indices of its texts that were truncated, or the error of its run.

    All texts of all requests run together, sorted by length and cut into runs of at most
    ``max_batch`` where padding would cost more than another run
    (:func:`~engram.inference.text_encoder.padding_aware_buckets`), so that short texts are not
    padded to a long neighbour's length. If that fails, each request is run again alone, so
    that a request the model refuses fails only itself.
    """
    try:
        return _embed_together(loaded, encoder, max_batch, requests)
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
    return [_embed_alone(loaded, encoder, max_batch, request) for request in requests]


def _embed_alone(loaded: LoadedModel, encoder: TextEncoder, max_batch: int, request: Sequence[Encoding]) -> Any:
    try:
        (result,) = _embed_together(loaded, encoder, max_batch, [request])
    except Exception as exc:
        return exc
    return result


def _embed_together(
    loaded: LoadedModel, encoder: TextEncoder, max_batch: int, requests: Sequence[Sequence[Encoding]]
) -> list[tuple[np.ndarray, list[int]]]:
    assert loaded.manifest.embedding is not None
    info = loaded.manifest.embedding
    encodings = [encoding for request in requests for encoding in request]
    vectors = np.empty((len(encodings), info.dim), dtype=np.float32)
    truncated = np.zeros(len(encodings), dtype=np.bool_)
    for indices, batch in encoder.batches_of(encodings, max_batch, padding_aware_buckets):
        out = run_session(loaded.session, loaded.manifest, embed_feed(loaded.manifest, batch.feed()),
                          [info.output], loaded.exotic)
        vectors[indices] = out[info.output]
        truncated[indices] = batch.truncated
        loaded.runs += 1
    results = []
    start = 0
    for request in requests:
        end = start + len(request)
        results.append((vectors[start:end], [int(i) for i in np.flatnonzero(truncated[start:end])]))
        start = end
    return results
