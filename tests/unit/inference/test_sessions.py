"""Sessions: providers, the optimized-model cache, running every dtype, and the LRU cache."""

from __future__ import annotations

import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from engram.errors import Unavailable
from engram.inference.manifest import Manifest
from engram.inference.registry import ModelRegistry
from engram.inference.sessions import (
    LoadedModel,
    SessionCache,
    SessionFactory,
    provider_chain,
    provider_fallbacks,
    run_session,
)
from engram.inference.settings import InferenceSettings, SessionSettings
from engram_bench.toy_models import identity_model, linear_model
from onnx import TensorProto


def test_provider_chain_prefers_what_is_available_and_falls_back_to_cpu() -> None:
    cpu = "CPUExecutionProvider"
    assert provider_chain(["CUDAExecutionProvider", cpu], [cpu]) == [cpu]
    assert provider_chain(["CUDAExecutionProvider", cpu], ["CUDAExecutionProvider", cpu]) == ["CUDAExecutionProvider", cpu]
    assert provider_chain(["TensorrtExecutionProvider"], ["CUDAExecutionProvider", cpu]) == [cpu]
    assert provider_chain([], [cpu]) == [cpu]


def test_provider_fallbacks_name_each_missing_accelerator_and_why() -> None:
    cpu = "CPUExecutionProvider"
    assert provider_fallbacks([cpu]) == []
    (cuda,) = provider_fallbacks(["CUDAExecutionProvider", cpu])  # this ONNX Runtime is the CPU build
    assert cuda.provider == "CUDAExecutionProvider"
    assert f"ONNX Runtime {ort.__version__} (CPU build) does not include it" in cuda.reason
    assert "onnxruntime-gpu (engram[gpu]" in cuda.reason and cpu in cuda.reason
    (made_up,) = provider_fallbacks(["MadeUpExecutionProvider"])
    assert "knows no execution provider named MadeUpExecutionProvider" in made_up.reason
    # one the build has, that a session nevertheless runs without (ONNX Runtime could not start it)
    (azure,) = provider_fallbacks(["AzureExecutionProvider", cpu], used=[cpu])
    assert "has AzureExecutionProvider but could not start it" in azure.reason
    assert provider_fallbacks(["AzureExecutionProvider", cpu], used=["AzureExecutionProvider", cpu]) == []


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    reg.ensure()
    return reg


def test_optimized_graph_is_cached_and_reused(registry: ModelRegistry, tmp_path: Path) -> None:
    manifest = registry.add_onnx("linear", linear_model(tmp_path / "l.onnx"))
    factory = SessionFactory(InferenceSettings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = factory.create(manifest, registry.folder("linear"))
    assert first.optimized_cache == "stored" and first.providers == ["CPUExecutionProvider"]
    assert [f.provider for f in first.fallbacks] == ["CUDAExecutionProvider"]
    second = factory.create(manifest, registry.folder("linear"))
    assert second.optimized_cache == "hit"
    a = run_session(first.session, manifest, {"x": x}, ["y"], False)["y"]
    b = run_session(second.session, manifest, {"x": x}, ["y"], False)["y"]
    assert a.tobytes() == b.tobytes()
    # A cache file that does not match its record is not trusted: optimized again.
    (cached,) = (registry.folder("linear") / "cache").glob("*.onnx")
    cached.write_bytes(cached.read_bytes() + b"\x00")
    assert factory.create(manifest, registry.folder("linear")).optimized_cache == "stored"
    off = SessionFactory(InferenceSettings(optimized_cache=False)).create(manifest, registry.folder("linear"))
    assert off.optimized_cache == "off"


def test_a_newly_optimized_graph_is_served_from_its_saved_file(registry: ModelRegistry, tmp_path: Path) -> None:
    # The session that optimised and saved the graph keeps more memory for its life than one
    # opened from the saved file, so the factory hands out the latter.
    manifest = registry.add_onnx("linear", linear_model(tmp_path / "l.onnx"))
    created = SessionFactory(InferenceSettings()).create(manifest, registry.folder("linear"))
    (cached,) = (registry.folder("linear") / "cache").glob("*.onnx")
    assert created.optimized_cache == "stored"
    assert created.session._model_path == str(cached)


def test_a_model_onnxruntime_cannot_load_is_unavailable(registry: ModelRegistry, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.nowhere")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("example.nowhere", 1)],
                              ir_version=10)
    onnx.save_model(model, str(tmp_path / "bad.onnx"))
    manifest = registry.add_onnx("bad", tmp_path / "bad.onnx")
    with pytest.raises(Unavailable) as caught:
        SessionFactory(InferenceSettings()).create(manifest, registry.folder("bad"))
    assert caught.value.reason == "load_failed"
    # The message passes on ONNX Runtime's own explanation, whatever this version's wording.
    with pytest.raises(Exception) as direct:  # noqa: B017 - ONNX Runtime's pybind errors share no useful base
        ort.InferenceSession(str(registry.folder("bad") / manifest.model_file), providers=["CPUExecutionProvider"])
    explanation = str(direct.value).replace("\n", " ")[:800]
    assert caught.value.message == f"ONNX Runtime {ort.__version__} cannot load model 'bad': {explanation}"


@pytest.mark.parametrize(
    ("elem", "array"),
    [
        (TensorProto.BFLOAT16, np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)),
        (TensorProto.FLOAT8E4M3FN, np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.float8_e4m3fn)),
        (TensorProto.FLOAT8E5M2, np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.float8_e5m2)),
        (TensorProto.FLOAT16, np.array([1.5, -2.0, 0.25], dtype=np.float16)),
        (TensorProto.UINT64, np.array([0, 2**64 - 1, 7], dtype=np.uint64)),
        (TensorProto.BOOL, np.array([True, False, True])),
        (TensorProto.STRING, np.array(["a", "bé", ""], dtype=object)),
    ],
)
def test_every_wire_dtype_runs_through_onnxruntime(registry: ModelRegistry, tmp_path: Path, elem: int, array: np.ndarray) -> None:
    manifest = registry.add_onnx("ident", identity_model(tmp_path / "i.onnx", elem, ["n"]))
    exotic = manifest.inputs[0].dtype in ("bfloat16", "float8e4m3fn", "float8e5m2")
    session = SessionFactory(InferenceSettings()).create(manifest, registry.folder("ident")).session
    out = run_session(session, manifest, {"x": array}, ["out"], exotic)["out"]
    assert out.dtype == array.dtype and out.tolist() == array.tolist()


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32])
def test_a_scalar_input_keeps_its_shape_on_the_ort_value_path(registry: ModelRegistry, tmp_path: Path, dtype) -> None:
    """Models with a bfloat16 input run with OrtValues; a 0-d input must reach ONNX Runtime as 0-d
    (Range, for one, takes scalars and shapes its output by them)."""
    elem = TensorProto.BFLOAT16 if dtype is ml_dtypes.bfloat16 else TensorProto.FLOAT
    manifest = registry.add_onnx("ident", identity_model(tmp_path / "i.onnx", elem))
    session = SessionFactory(InferenceSettings()).create(manifest, registry.folder("ident")).session
    scalar = np.array(1.5, dtype=dtype)
    out = run_session(session, manifest, {"x": scalar}, ["out"], exotic=True)["out"]
    assert out.shape == () and out.dtype == scalar.dtype and out.item() == 1.5


# --- the LRU cache, with a fake loader (no ONNX Runtime needed) -------------------------------------------


def fake_model(name: str, size: int) -> LoadedModel:
    manifest = Manifest(name=name, files={"model.onnx": "0" * 64}, inputs=[], outputs=[])
    return LoadedModel(name=name, manifest=manifest, session=None, providers=["CPUExecutionProvider"],  # type: ignore[arg-type]
                       size_bytes=size, load_seconds=0.0, optimized_cache="off", signature="unsigned", signed_by=None,
                       exotic=False, batchable=False)


class Recorder:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.loads: list[str] = []
        self.unloads: list[tuple[str, str]] = []

    async def load(self, name: str) -> LoadedModel:
        self.loads.append(name)
        return fake_model(name, self.sizes.get(name, 1))

    def unloaded(self, model: LoadedModel, reason: str) -> None:
        self.unloads.append((model.name, reason))


def cache_with(sizes: dict[str, int], **limits) -> tuple[SessionCache, Recorder]:
    recorder = Recorder(sizes)
    settings = InferenceSettings(sessions=SessionSettings(**limits))
    return SessionCache(settings, recorder.load, recorder.unloaded), recorder


async def test_lru_eviction_by_count() -> None:
    cache, rec = cache_with({}, max_items=2)
    await cache.get("a")
    await cache.get("b")
    await cache.get("a")  # a is now the most recently used
    await cache.get("c")
    assert rec.unloads == [("b", "max_items")]
    assert [m.name for m in cache.models] == ["a", "c"]
    await cache.get("a")
    assert rec.loads == ["a", "b", "c"]  # a stayed loaded


async def test_lru_eviction_by_bytes_keeps_the_newest_even_if_alone_too_big() -> None:
    cache, rec = cache_with({"a": 3 * 2**20, "b": 3 * 2**20, "huge": 20 * 2**20}, max_bytes=8 * 2**20)
    await cache.get("a")
    await cache.get("b")
    assert rec.unloads == []
    await cache.get("huge")
    assert rec.unloads == [("a", "max_bytes"), ("b", "max_bytes")]
    assert [m.name for m in cache.models] == ["huge"]


async def test_idle_models_are_reaped_after_the_ttl_but_not_while_running() -> None:
    cache, rec = cache_with({}, idle_ttl=60)
    a = await cache.get("a")
    b = await cache.get("b")
    now = time.monotonic()
    assert cache.reap(now + 30) == []
    b.active = 1  # a request in flight
    assert cache.reap(now + 61) == ["a"]
    assert rec.unloads == [("a", "idle")]
    b.active = 0
    assert cache.reap(now + 61) == ["b"]
    assert a not in cache.models


async def test_zero_ttl_never_reaps_and_clear_unloads_everything() -> None:
    cache, rec = cache_with({}, idle_ttl=0)
    await cache.get("a")
    assert cache.reap(time.monotonic() + 10**6) == []
    cache.clear("shutdown")
    assert rec.unloads == [("a", "shutdown")] and cache.models == []


async def test_concurrent_gets_load_once() -> None:
    import anyio

    cache, rec = cache_with({})
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(cache.get, "a")
    assert rec.loads == ["a"]
