"""Deadlines over the socket: params._meta.deadline_ms, -32004 without running, the EDF batcher, misses counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from engram_bench.bert import sample_texts
from engram_bench.tiny_bert import create_tiny_bert

from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e

ENV = {
    "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
    "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny",
    # One batch at a time, of few texts: a long request holds the model while others queue.
    "ENGRAM_INFERENCE__BATCHING__PARALLEL_RUNS": "1",
    "ENGRAM_INFERENCE__BATCHING__MAX_BATCH": "4",
    # One member of a batch at a time: the second member waits for the first.
    "ENGRAM_SERVER__MAX_INFLIGHT_PER_CONNECTION": "1",
    "ENGRAM_INFERENCE__EMBED_MAX_TEXTS": "8192",
}
LONG = sample_texts(8192, seed=3)  # one infer.embed that keeps the tiny model busy for a second or more


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    bert = create_tiny_bert(tmp_path_factory.mktemp("deadlines") / "tiny-bert")
    with running_daemon(ENV) as process:
        process.call("models.import", {"name": "tiny", "path": str(bert)})
        process.call("models.load", {"name": "tiny"})
        yield process


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    for family in daemon.call("system.metrics")["families"]:
        for sample in family["samples"]:
            if sample["name"] == name and all(sample["labels"].get(k) == v for k, v in labels.items()):
                return float(sample["value"])
    return 0.0


def embedded_requests(daemon: DaemonProcess) -> float:
    """infer.embed requests the tiny model's batcher has run (the sum of its batch sizes)."""
    return metric(daemon, "engram_inference_batch_requests_sum", model="tiny")


def with_deadline(method: str, params: dict[str, Any], ms: Any, request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": {"deadline_ms": ms}}}


def long_embed_in_background(daemon: DaemonProcess) -> tuple[threading.Thread, list[Any]]:
    """Send the long infer.embed on its own connection; returns once the batcher runs it."""
    answers: list[Any] = []
    before = embedded_requests(daemon)
    runs = daemon.call("models.info", {"name": "tiny"})["runs"]

    def send() -> None:
        with daemon.client(timeout=120) as client:
            answers.append(client.call("infer.embed", {"texts": LONG}))

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 20
    # The model counts its session runs as they happen (a batch's requests only when it ends).
    while daemon.call("models.info", {"name": "tiny"})["runs"] == runs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert embedded_requests(daemon) == before  # still running
    return thread, answers


def test_a_request_that_expires_in_the_batcher_queue_is_answered_and_never_runs(daemon: DaemonProcess) -> None:
    misses = metric(daemon, "engram_deadline_misses_total", where="batcher")
    before = embedded_requests(daemon)
    thread, answers = long_embed_in_background(daemon)
    with daemon.raw() as tight, daemon.raw() as loose:
        tight.send(with_deadline("infer.embed", {"texts": ["tight"]}, 300, request_id=7))
        loose.send(with_deadline("infer.embed", {"texts": ["loose"]}, 60_000, request_id=8))
        missed = tight.recv()
        served = loose.recv()
    thread.join(60)
    assert missed["id"] == 7 and missed["error"]["code"] == -32004
    assert missed["error"]["data"]["reason"] == "deadline_missed" and missed["error"]["data"]["where"] == "batcher"
    assert missed["error"]["data"]["deadline_ms"] == 300
    # The generous request and the long one (another client's) were served; the expired one never ran.
    assert served["id"] == 8 and served["result"]["dim"] > 0
    assert answers and answers[0]["model"] == "tiny"
    assert embedded_requests(daemon) - before == 2
    assert metric(daemon, "engram_deadline_misses_total", where="batcher") == misses + 1


def test_a_recall_whose_query_waits_in_the_batcher_past_its_deadline_is_answered_deadline_missed(
    daemon: DaemonProcess,
) -> None:
    """memory.recall embeds its query through the same batcher, with the request's deadline."""
    daemon.call("memory.remember", {"items": [{"text": "something to recall"}]})
    misses = metric(daemon, "engram_deadline_misses_total", where="batcher")
    thread, _ = long_embed_in_background(daemon)
    with daemon.raw() as tight, daemon.raw() as loose:
        tight.send(with_deadline("memory.recall", {"query": "something"}, 300, request_id=9))
        loose.send(with_deadline("memory.recall", {"query": "something"}, 60_000, request_id=10))
        missed = tight.recv()
        found = loose.recv()
    thread.join(60)
    assert missed["error"]["code"] == -32004, missed
    assert missed["error"]["data"]["reason"] == "deadline_missed" and missed["error"]["data"]["where"] == "batcher"
    assert any(hit["text"] == "something to recall" for hit in found["result"]["hits"])
    assert metric(daemon, "engram_deadline_misses_total", where="batcher") == misses + 1


def test_a_request_that_waits_behind_its_batch_expires_without_running(daemon: DaemonProcess) -> None:
    misses = metric(daemon, "engram_deadline_misses_total", where="before_run")
    with daemon.raw() as conn:
        conn.sock.settimeout(120)
        conn.send([
            {"jsonrpc": "2.0", "id": 1, "method": "infer.embed", "params": {"texts": LONG}},
            with_deadline("memory.remember", {"items": [{"text": "never stored", "vector": None}]}, 50, request_id=2),
        ])
        answers = {answer["id"]: answer for answer in conn.recv()}
    assert "result" in answers[1]  # the other member of the batch is not failed by it
    error = answers[2]["error"]
    assert error["code"] == -32004 and error["data"]["reason"] == "deadline_missed"
    assert error["data"]["where"] == "before_run"
    assert "audit_seq" in error["data"]  # refused as the chain refuses: audited
    listed = daemon.call("memory.list", {"limit": 100})["episodes"]
    assert all(episode["text"] != "never stored" for episode in listed)
    assert metric(daemon, "engram_deadline_misses_total", where="before_run") == misses + 1


def test_a_generous_deadline_runs_and_a_request_cut_short_says_deadline(daemon: DaemonProcess) -> None:
    with daemon.raw() as conn:
        stored = conn.request(with_deadline("memory.remember", {"items": [{"text": "stored in time"}]}, 30_000))
        assert len(stored["result"]["ids"]) == 1
        assert conn.request(with_deadline("system.ping", {}, 1000))["result"]["pong"] is True
        assert conn.request(with_deadline("system.ping", {}, 1000, request_id=None))["result"]["pong"] is True
        running = metric(daemon, "engram_deadline_misses_total", where="running")
        conn.sock.settimeout(120)
        cut = conn.request(with_deadline("infer.embed", {"texts": LONG}, 700))
    assert cut["error"]["code"] == -32004 and cut["error"]["data"]["reason"] == "deadline", cut
    assert cut["error"]["data"]["deadline_ms"] == 700
    assert metric(daemon, "engram_deadline_misses_total", where="running") == running + 1
    assert daemon.call("memory.list", {"limit": 100})["episodes"][0]["text"] == "stored in time"
    assert metric(daemon, "engram_deadline_requests_total") >= 4


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"deadline_ms": 0}, "_meta.deadline_ms"),
        ({"deadline_ms": -5}, "_meta.deadline_ms"),
        ({"deadline_ms": 1.5}, "_meta.deadline_ms"),
        ({"deadline_ms": "100"}, "_meta.deadline_ms"),
        ({"deadline_ms": True}, "_meta.deadline_ms"),
        ({"deadline_ms": 10**12}, "_meta.deadline_ms"),
        ({"deadline_ms": 10**30}, "_meta.deadline_ms"),
        ({"deadline": 100}, "_meta.deadline"),
        ([100], "_meta"),
        ("soon", "_meta"),
    ],
)
def test_bad_deadlines_are_invalid_params_naming_the_field(daemon: DaemonProcess, meta: Any, field: str) -> None:
    with daemon.raw() as conn:
        for method in ("system.ping", "memory.list"):
            answer = conn.request({"jsonrpc": "2.0", "id": 3, "method": method, "params": {"_meta": meta}})
            error = answer["error"]
            assert error["code"] == -32602, answer
            assert error["data"]["field"] == field and error["data"]["reason"] == "invalid_params"
        assert conn.request({"jsonrpc": "2.0", "id": 4, "method": "system.ping"})["result"]["pong"] is True


def test_meta_is_not_a_param_of_the_method(daemon: DaemonProcess) -> None:
    """Every method takes _meta; it never reaches the params model (which forbids unknown fields)."""
    with daemon.raw() as conn:
        answer = conn.request(with_deadline("memory.stats", {}, 5000))
        assert "result" in answer, answer
        unknown = conn.request({"jsonrpc": "2.0", "id": 5, "method": "memory.stats", "params": {"meta": {}}})
        assert unknown["error"]["code"] == -32602 and unknown["error"]["data"]["field"] == "meta"
