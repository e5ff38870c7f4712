"""One client's bad input fails only its own requests, never the dynamic batch it shares with others.

A text the tokenizer refuses (a lone UTF-16 surrogate) used to fail every request of the batch
it landed in: every concurrent infer.embed and memory.remember of every other client.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from engram.errors import RPCError
from engram_bench.tiny_bert import TINY_CORPUS, create_tiny_bert

from tests.conftest import DaemonProcess, short_tempdir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    base = short_tempdir()
    env = {
        "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
        "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny",
        # A generous wait for company, so that concurrent requests do share batches.
        "ENGRAM_INFERENCE__BATCHING__MAX_QUEUE_DELAY_US": "20000",
    }
    daemon = DaemonProcess(base / "state", env)
    try:
        daemon.start()
        daemon.call("models.import", {"name": "tiny", "path": str(create_tiny_bert(base / "tiny-bert"))})
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_bad_text_fails_only_its_own_request_among_concurrent_clients(daemon: DaemonProcess) -> None:
    good_failures: list[str] = []
    good_done = {"embed": 0, "remember": 0}
    bad_errors: list[int] = []
    stop = threading.Event()

    def embedder(n: int) -> None:
        with daemon.client() as client:
            for i in range(12):
                try:
                    result = client.call("infer.embed", {"texts": [TINY_CORPUS[(n + i) % len(TINY_CORPUS)]]})
                    assert result["vectors"]["shape"] == [1, 32]
                    good_done["embed"] += 1
                except RPCError as exc:
                    good_failures.append(f"infer.embed: {exc.code} {exc.message}")

    def rememberer(n: int) -> None:
        with daemon.client() as client:
            for i in range(6):
                try:
                    client.call("memory.remember", {"items": [{"text": f"{TINY_CORPUS[i % len(TINY_CORPUS)]} {n} {i}"}]})
                    good_done["remember"] += 1
                except RPCError as exc:
                    good_failures.append(f"memory.remember: {exc.code} {exc.message}")

    def attacker() -> None:
        with daemon.client() as client:
            while not stop.is_set():
                try:
                    client.call("infer.embed", {"texts": ["a lone \ud800 surrogate"]})
                except RPCError as exc:
                    bad_errors.append(exc.code)

    bad = threading.Thread(target=attacker)
    good: list[Any] = [threading.Thread(target=embedder, args=(n,)) for n in range(6)]
    good += [threading.Thread(target=rememberer, args=(n,)) for n in range(2)]
    bad.start()
    for thread in good:
        thread.start()
    for thread in good:
        thread.join(60)
    stop.set()
    bad.join(60)
    assert good_failures == []
    assert good_done == {"embed": 6 * 12, "remember": 2 * 6}
    assert bad_errors and set(bad_errors) == {-32602}
