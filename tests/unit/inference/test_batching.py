"""Dynamic batching: the queue and its batches, and batched results equal to unbatched ones."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from engram.errors import InvalidParams, Overloaded, RPCError
from engram.inference.batching import (
    Batcher,
    BatcherClosed,
    TensorRequest,
    is_batchable,
    run_embed_batch,
    run_tensor_batch,
)
from engram.inference.registry import ModelRegistry
from engram.inference.sessions import LoadedModel, SessionFactory
from engram.inference.settings import InferenceSettings
from engram.inference.text_encoder import TextEncoder
from engram_bench.tiny_bert import TINY_CORPUS, create_tiny_bert
from engram_bench.toy_models import identity_model, linear_model, write_model
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer


class Gate:
    """A run_batch whose first call blocks until released, recording every batch."""

    def __init__(self, fail: set[Any] = frozenset()) -> None:
        self.batches: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.started.set()
            self.release.wait(10)
        return [ValueError(f"bad {i}") if i in self.fail else i * 10 for i in items]


async def wait_started(gate: Gate) -> None:
    while not gate.started.is_set():
        await anyio.sleep(0.001)


def batcher(gate: Gate, **kw: Any) -> Batcher:
    options = {"max_batch": 32, "max_delay_s": 0.0, "queue_size": 64, "limiter": anyio.CapacityLimiter(2), **kw}
    return Batcher("m", gate, **options)


async def test_requests_that_wait_together_run_together() -> None:
    gate = Gate()
    b = batcher(gate, max_batch=4)
    results: dict[int, int] = {}

    async def submit(i: int) -> None:
        results[i] = await b.submit(i, 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        tg.start_soon(submit, 0)
        await wait_started(gate)  # batch [0] is running; the next ones queue up behind it
        for i in range(1, 10):
            tg.start_soon(submit, i)
        while b.depth < 9:
            await anyio.sleep(0.001)
        gate.release.set()
        while len(results) < 10:
            await anyio.sleep(0.001)
        b.close()
    assert results == {i: i * 10 for i in range(10)}
    assert [len(batch) for batch in gate.batches] == [1, 4, 4, 1]  # max_batch rows at most
    assert sorted(x for batch in gate.batches for x in batch) == list(range(10))


async def test_a_full_queue_refuses_at_once() -> None:
    gate = Gate()
    b = batcher(gate, queue_size=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        tg.start_soon(b.submit, 0, 1)
        await wait_started(gate)
        tg.start_soon(b.submit, 1, 1)
        tg.start_soon(b.submit, 2, 1)
        while b.depth < 2:
            await anyio.sleep(0.001)
        with pytest.raises(Overloaded) as caught:
            await b.submit(3, 1)
        assert caught.value.code == -32003 and caught.value.reason == "queue_full"
        gate.release.set()
        b.close()
    with pytest.raises(BatcherClosed):
        await b.submit(4, 1)
    assert sorted(x for batch in gate.batches for x in batch) == [0, 1, 2]


async def test_each_request_gets_its_own_error() -> None:
    gate = Gate(fail={2})
    gate.release.set()
    b = batcher(gate)
    outcomes: dict[int, Any] = {}

    async def submit(i: int) -> None:
        try:
            outcomes[i] = await b.submit(i, 1)
        except ValueError as exc:
            outcomes[i] = str(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        for i in range(4):
            tg.start_soon(submit, i)
        while len(outcomes) < 4:
            await anyio.sleep(0.001)
        b.close()
    assert outcomes == {0: 0, 1: 10, 2: "bad 2", 3: 30}


async def test_a_batch_that_fails_as_a_whole_fails_only_its_bad_request() -> None:
    def run_batch(items: list[str]) -> list[str]:
        # Like a tokenizer or a model that refuses the whole batch for one bad item in it.
        if "bad" in items:
            raise TypeError("refused input")
        return [item.upper() for item in items]

    b = Batcher("m", run_batch, max_batch=32, max_delay_s=0.0, queue_size=64, limiter=anyio.CapacityLimiter(1))
    outcomes: dict[str, Any] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await b.submit(item, 1)
        except TypeError as exc:
            outcomes[item] = exc

    async with anyio.create_task_group() as tg:
        for item in ("a", "bad", "b", "c"):
            tg.start_soon(submit, item)
        while b.depth < 4:  # all four queued before the batcher starts: they make one batch
            await anyio.sleep(0.001)
        tg.start_soon(b.run)
        while len(outcomes) < 4:
            await anyio.sleep(0.001)
        b.close()
    assert {k: v for k, v in outcomes.items() if k != "bad"} == {"a": "A", "b": "B", "c": "C"}
    assert isinstance(outcomes["bad"], TypeError)
    assert b.batches == 1  # they did share a batch


def _two_runs(run_batch: Callable[[list[int]], list[int]]) -> tuple[Batcher, dict[int, int], Callable[[int], Awaitable[None]]]:
    """A batcher of two parallel runs that never waits for company; the results by request, and
    the function that submits request ``i`` (one row) and records its result."""
    b = Batcher("m", run_batch, max_batch=32, max_delay_s=0.0, queue_size=64, limiter=anyio.CapacityLimiter(4),
                parallel_runs=2)
    results: dict[int, int] = {}

    async def submit(i: int) -> None:
        results[i] = await b.submit(i, 1)

    return b, results, submit


async def test_parallel_runs_overlap_and_the_queue_waits_for_a_free_run() -> None:
    both_running = threading.Barrier(2, timeout=10)  # passes only if two batches run at once
    release = threading.Event()
    batches: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) <= 2:
            both_running.wait()
            release.wait(10)
        return [i * 10 for i in items]

    b, results, submit = _two_runs(run_batch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        tg.start_soon(submit, 0)
        while len(batches) < 1:
            await anyio.sleep(0.001)
        tg.start_soon(submit, 1)
        while len(batches) < 2:  # the second run starts while the first still runs
            await anyio.sleep(0.001)
        for i in range(2, 7):
            tg.start_soon(submit, i)
        while b.depth < 5:  # both runs busy: nothing is taken from the queue meanwhile
            await anyio.sleep(0.001)
        release.set()
        while len(results) < 7:
            await anyio.sleep(0.001)
        b.close()
    assert results == {i: i * 10 for i in range(7)}  # every result to its own requester
    assert batches[:2] == [[0], [1]]
    # The five that waited ran once a run was free: in one batch, or shared with the other run
    # when both were free at the time.
    assert sorted(sum(batches[2:], [])) == [2, 3, 4, 5, 6] and len(batches) in (3, 4)


async def test_requests_waiting_for_free_runs_are_shared_between_them() -> None:
    # Eight requests waiting and two runs free: two batches of four side by side, not one of
    # eight in one thread while the other run slot idles.
    both_running = threading.Barrier(2, timeout=10)  # passes only if two batches run at once
    batches: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        batches.append(list(items))
        both_running.wait()
        return [i * 10 for i in items]

    b, results, submit = _two_runs(run_batch)
    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(submit, i)
        while b.depth < 8:
            await anyio.sleep(0.001)
        tg.start_soon(b.run)
        while len(results) < 8:
            await anyio.sleep(0.001)
        b.close()
    assert results == {i: i * 10 for i in range(8)}
    assert sorted(len(batch) for batch in batches) == [4, 4] and sorted(sum(batches, [])) == list(range(8))


def test_parallel_runs_zero_is_one_per_core_at_most_the_workers() -> None:
    settings = InferenceSettings()
    assert settings.threads.intra_op == 1 and settings.threads.spin is False
    assert 1 <= settings.parallel_runs() <= settings.threads.workers
    assert InferenceSettings(batching={"parallel_runs": 3}).parallel_runs() == 3
    assert InferenceSettings(batching={"parallel_runs": 8}, threads={"workers": 2}).parallel_runs() == 2


# --- tensors through ONNX Runtime -------------------------------------------------------------------------


def loaded(tmp_path: Path, name: str, source: Path) -> LoadedModel:
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure()
    manifest = registry.add_onnx(name, source)
    created = SessionFactory(InferenceSettings()).create(manifest, registry.folder(name))
    return LoadedModel(name=name, manifest=manifest, session=created.session, providers=created.providers,
                       size_bytes=1, load_seconds=0, optimized_cache="off", signature="unsigned", signed_by=None,
                       exotic=False, batchable=is_batchable(manifest))


def test_batched_results_equal_unbatched(tmp_path: Path) -> None:
    model = loaded(tmp_path, "linear", linear_model(tmp_path / "l.onnx", inputs=16, outputs=8))
    assert model.batchable
    rng = np.random.default_rng(1)
    requests = [TensorRequest({"x": rng.normal(size=(rows, 16)).astype(np.float32)}, ("y", "relu")) for rows in (1, 3, 1, 2, 5)]
    together = run_tensor_batch(model, requests)
    for request, result in zip(requests, together, strict=True):
        (alone,) = run_tensor_batch(model, [request])
        for name in ("y", "relu"):
            assert result[name].shape == alone[name].shape
            # Each request gets back its own rows; ONNX Runtime promises no bit-identical rows across
            # batch sizes (it may pick other kernels for one row than for five), so within rounding.
            np.testing.assert_allclose(result[name], alone[name], rtol=1e-6, atol=1e-6)


def test_layouts_that_differ_run_separately(tmp_path: Path) -> None:
    model = loaded(tmp_path, "ident", identity_model(tmp_path / "i.onnx", TensorProto.FLOAT, ["n", "m"]))
    a = TensorRequest({"x": np.ones((2, 3), np.float32)}, ("out",))
    b = TensorRequest({"x": np.full((1, 5), 2.0, np.float32)}, ("out",))
    ra, rb = run_tensor_batch(model, [a, b])
    assert ra["out"].shape == (2, 3) and rb["out"].shape == (1, 5)


def test_one_bad_request_fails_alone(tmp_path: Path) -> None:
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["rows"])], "gather",
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 2])], initializer=[table])
    model = loaded(tmp_path, "gather", write_model(tmp_path / "g.onnx", graph))
    good = TensorRequest({"idx": np.array([1, 2])}, ("rows",))
    bad = TensorRequest({"idx": np.array([100])}, ("rows",))
    r_good, r_bad = run_tensor_batch(model, [good, bad])
    np.testing.assert_array_equal(r_good["rows"], [[2, 3], [4, 5]])
    assert isinstance(r_bad, RPCError)
    assert isinstance(r_bad, InvalidParams) or r_bad.reason == "run_failed"


def test_batchable_needs_one_shared_symbolic_first_dimension(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert is_batchable(registry.add_onnx("a", linear_model(tmp_path / "a.onnx")))
    assert not is_batchable(registry.add_onnx("b", linear_model(tmp_path / "b.onnx", batch=2)))
    assert not is_batchable(registry.add_onnx("c", identity_model(tmp_path / "c.onnx", TensorProto.FLOAT, None)))


# --- texts ---------------------------------------------------------------------------------------------------


def tiny_embedder(tmp_path: Path) -> tuple[LoadedModel, TextEncoder, Path]:
    registry = ModelRegistry(tmp_path / "models")
    manifest, _ = registry.import_bert("tiny", create_tiny_bert(tmp_path / "bert"))
    created = SessionFactory(InferenceSettings()).create(manifest, registry.folder("tiny"))
    model = LoadedModel(name="tiny", manifest=manifest, session=created.session, providers=created.providers,
                        size_bytes=1, load_seconds=0, optimized_cache="off", signature="unsigned", signed_by=None,
                        exotic=False, batchable=True)
    tokenizer_file = registry.folder("tiny") / "tokenizer.json"
    return model, TextEncoder(Tokenizer.from_file(str(tokenizer_file)), manifest.embedding.max_seq_len), tokenizer_file


def test_embed_batches_preserve_order_and_match_single_runs(tmp_path: Path) -> None:
    model, encoder, _ = tiny_embedder(tmp_path)
    long_text = " ".join(TINY_CORPUS)  # longer than 48 tokens: truncated
    requests = [[TINY_CORPUS[0], long_text], [TINY_CORPUS[3]], [TINY_CORPUS[5], TINY_CORPUS[0], "x"]]
    results = run_embed_batch(model, encoder, 4, [encoder.tokenize(request) for request in requests])
    for request, (vectors, truncated) in zip(requests, results, strict=True):
        assert vectors.shape == (len(request), 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        for text, row in zip(request, vectors, strict=True):
            ((alone, _),) = run_embed_batch(model, encoder, 1, [encoder.tokenize([text])])
            np.testing.assert_allclose(row, alone[0], atol=1e-5)
        assert truncated == ([1] if long_text in request else [])
    np.testing.assert_allclose(results[0][0][0], results[2][0][1], atol=1e-6)  # same text, same vector


def test_an_embed_request_the_model_refuses_fails_alone(tmp_path: Path) -> None:
    model, encoder, tokenizer_file = tiny_embedder(tmp_path)
    # A token id past the model's vocabulary: the model's embedding lookup fails on that row only.
    wider = Tokenizer.from_file(str(tokenizer_file))
    wider.add_tokens(["unknownword"])
    bad = TextEncoder(wider, encoder.max_seq_len).tokenize(["unknownword"])
    good = [encoder.tokenize([TINY_CORPUS[1]]), encoder.tokenize([TINY_CORPUS[2], "x"])]
    first, failed, second = run_embed_batch(model, encoder, 4, [good[0], bad, good[1]])
    assert isinstance(failed, InvalidParams)
    for request, (vectors, _) in zip(good, (first, second), strict=True):
        ((alone, _),) = run_embed_batch(model, encoder, 4, [request])
        np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_a_text_the_tokenizer_refuses_is_invalid_params_naming_it(tmp_path: Path) -> None:
    _, encoder, _ = tiny_embedder(tmp_path)
    with pytest.raises(InvalidParams) as caught:
        encoder.tokenize(["fine", "lone \ud800 surrogate"])
    assert caught.value.data["field"] == "texts.1"
    assert len(encoder.tokenize(["fine", "also fine"])) == 2


def test_padding_aware_buckets_cut_where_padding_costs_more_than_a_run() -> None:
    from engram.inference.text_encoder import padding_aware_buckets

    lengths = [10] * 10 + [60]
    buckets = padding_aware_buckets(lengths, 32)
    assert [sorted(b.tolist()) for b in buckets] == [[10], list(range(10))]  # the long one alone, first
    assert sorted(len(b) for b in padding_aware_buckets([12] * 9, 4)) == [1, 4, 4]  # max_batch rows at most
    assert len(padding_aware_buckets([20, 21, 19, 22], 32)) == 1  # similar lengths: one run
    # A run costs a few token-rows, not tens: a text twice as long as its neighbour runs apart
    # rather than doubling the neighbour's cost with padding.
    assert [sorted(b.tolist()) for b in padding_aware_buckets([20, 40], 32)] == [[1], [0]]
    rng = np.random.default_rng(3)
    many = rng.integers(2, 128, size=200).tolist()
    buckets = padding_aware_buckets(many, 16)
    assert sorted(i for b in buckets for i in b.tolist()) == list(range(200))
    assert all(1 <= len(b) <= 16 for b in buckets)
    padded = sum(len(b) * max(many[i] for i in b) for b in buckets)
    assert padded < 1.2 * sum(many)  # little padding left
    assert padding_aware_buckets([], 4) == []
