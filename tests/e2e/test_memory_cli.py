"""``engram memory`` and ``engram bench memory`` as a person runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}


def engram(daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"ENGRAM_SOCKET": str(daemon.socket)})  # output and status are checked, not the process


def test_import_export_is_resumable_and_complete(make_daemon, tmp_path):
    daemon = make_daemon(env=NO_MODEL)
    lines = [json.dumps({"text": f"episode {i}", "vector": [1.0, i / 10, 0.5], "tags": ["imported"], "session": "s"}) for i in range(25)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines[:10]) + "\n")  # a first, partial run
    first = engram(daemon, "memory", "import", str(source), "--batch", "4", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"imported": 10, "skipped": 0, "lines": 10}
    source.write_text("\n".join(lines) + "\n")  # the whole file: the first ten are skipped
    second = engram(daemon, "memory", "import", str(source), "--batch", "4")
    assert second.returncode == 0 and "15 imported, 10 already there, from 25 lines" in second.stdout

    exported = tmp_path / "out.jsonl"
    out = engram(daemon, "memory", "export", str(exported), "--page", "7", "--vectors", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"exported": 25, "total": 25}
    items = [json.loads(line) for line in exported.read_text().splitlines()]
    assert sorted(i["text"] for i in items) == sorted(f"episode {i}" for i in range(25))
    assert all(i["tags"] == ["imported"] and len(i["vector"]) == 3 for i in items)
    to_stdout = engram(daemon, "memory", "export")
    assert to_stdout.returncode == 0 and len(to_stdout.stdout.splitlines()) == 25

    # A backup imported into another namespace, twice: once.
    for expected in ("25 imported", "0 imported"):
        copy = engram(daemon, "memory", "import", str(exported), "--namespace", "restored")
        assert copy.returncode == 0 and expected in copy.stdout
    stats = json.loads(engram(daemon, "memory", "stats", "--namespace", "restored", "--json").stdout)
    assert stats["episodes"] == 25

    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + '{"text": ""}\n')
    failed = engram(daemon, "memory", "import", str(bad))
    assert failed.returncode == 2 and "line 2: text: empty text" in failed.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json\n")
    assert "line 1: not JSON" in engram(daemon, "memory", "import", str(garbage)).stderr


def test_remember_recall_get_forget_working_graph(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    no_model = engram(daemon, "memory", "remember", "hello")
    assert no_model.returncode == 1 and "no_embedder" in no_model.stderr
    ids = daemon.call("memory.remember", {"items": [{"text": "alpha note", "vector": [1, 0], "session": "s1"},
                                                     {"text": "beta note", "vector": [0, 1], "session": "s2"}]})["ids"]
    got = engram(daemon, "memory", "get", ids[0])
    assert got.returncode == 0 and "alpha note" in got.stdout
    missing = engram(daemon, "memory", "get", "ep_01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.returncode == 1 and "-32002" in missing.stderr
    assert "give episode ids" in engram(daemon, "memory", "forget").stderr
    forgot = engram(daemon, "memory", "forget", "--session", "s2")
    assert forgot.returncode == 0 and "forgot 1 episodes" in forgot.stdout
    stats = engram(daemon, "memory", "stats")
    assert stats.returncode == 0 and "episodes     1" in stats.stdout and "(not available)" in stats.stdout

    put = engram(daemon, "memory", "working", "put", "chat", "remember the milk", "--key", "milk")
    assert put.returncode == 0 and put.stdout.strip() == "milk"
    assert engram(daemon, "memory", "working", "get", "chat", "milk").stdout.strip() == "remember the milk"
    assert "milk" in engram(daemon, "memory", "working", "list", "chat").stdout
    assert "cleared 1" in engram(daemon, "memory", "working", "clear", "chat").stdout

    related = engram(daemon, "memory", "graph", "relate", "ada", "lives_in", "paris", "--exclusive")
    assert related.returncode == 0 and "ada lives_in paris  (created)" in related.stdout
    moved = engram(daemon, "memory", "graph", "relate", "ada", "lives_in", "london", "--exclusive")
    assert "retracted re_" in moved.stdout
    queried = engram(daemon, "memory", "graph", "query", "ada")
    assert queried.returncode == 0 and "london" in queried.stdout and "paris" not in queried.stdout
    forgot_all = engram(daemon, "memory", "forget", "--all-in-namespace", "--json")
    assert json.loads(forgot_all.stdout)["forgotten"] == 1


def test_bench_memory_smoke(tmp_path):
    out = run_cli("bench", "memory", "--sizes", "150,300", "--queries", "10", "--forgets", "5", "--embed-sample", "0",
                  "--batch", "50", "--clients", "2", "--json", env=NO_MODEL)  # the report is checked, not the process
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    ops = {(r["size"], r["op"], r["target"]) for r in report["rows"]}
    for size in (150, 300):
        assert {(size, "ingest", "engram"), (size, "ingest", "baseline"), (size, "recall", "engram"),
                (size, "recall", "baseline"), (size, "recall_hybrid", "engram")} <= ops
    assert {(300, "forget", "engram"), (300, "forget", "baseline")} <= ops
    recall = [r for r in report["rows"] if r["op"] == "recall" and r["target"] == "engram"]
    assert all(r["recall_at_10"] >= 0.95 for r in recall)
    assert {r["op"] for r in report["ratios"]} == {"ingest", "recall", "forget"}
    if sys.platform == "linux":  # the daemon's memory, from /proc: through ingest, after recalls, across a restart
        assert {"peak_ingest_and_build", "steady_after_recalls", "peak_index_load", "steady_after_restart"} <= set(report["memory_mib"])
    assert any("recall_text skipped" in n for n in report["notes"])  # no embedding model here
