"""kill -9 during a stream of concurrent writes loses no acknowledged episode and leaves nothing
half-written: after a restart every acknowledged episode is there and recallable by its vector,
every episode there was sent by a writer, and the vector index holds exactly the rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from engram.errors import EngramError

pytestmark = pytest.mark.e2e

DIM = 16
ENV = {
    "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
    "ENGRAM_MEMORY__INDEX__SAVE_INTERVAL": "0.1",  # saves all the time: the kill may land in one
    "ENGRAM_MEMORY__INDEX__HNSW_THRESHOLD": "300",  # and in an HNSW build
    "ENGRAM_LOG__LEVEL": "info",
}


class Writers:
    """Threads writing small batches until the daemon dies; each remembers what was acknowledged."""

    def __init__(self, daemon, count: int, round_: int) -> None:
        self.daemon = daemon
        self.acked: dict[str, tuple[str, np.ndarray]] = {}  # id -> (text, vector)
        self.sent: set[str] = set()  # every text sent, acknowledged or not
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n, round_), daemon=True) for n in range(count)]

    def _run(self, n: int, round_: int) -> None:
        rng = np.random.default_rng((round_, n))
        try:
            with self.daemon.client(timeout=30) as client:
                for i in range(100_000):
                    size = int(rng.integers(1, 12))
                    vectors = rng.normal(size=(size, DIM)).astype(np.float32)
                    texts = [f"r{round_}-w{n}-{i}-{j}" for j in range(size)]
                    with self.lock:
                        self.sent.update(texts)
                    ids = client.call("memory.remember", {"items": [
                        {"text": t, "vector": v.tolist()} for t, v in zip(texts, vectors)
                    ]})["ids"]
                    with self.lock:
                        for ident, t, v in zip(ids, texts, vectors):
                            self.acked[ident] = (t, v)
        except (EngramError, OSError, EOFError):
            return  # the daemon is gone

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def wait_for(self, acked: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < acked and time.monotonic() < deadline:
            time.sleep(0.01)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=30)


def export_all(client) -> dict[str, str]:
    out, after = {}, None
    while True:
        page = client.call("memory.export", {"limit": 1000, **({"after": after} if after else {})})
        out.update({item["id"]: item["text"] for item in page["items"]})
        after = page["next"]
        if after is None:
            return out


def test_sigkill_during_writes_loses_nothing_acknowledged(make_daemon):
    daemon = make_daemon(env=ENV)
    state = daemon.state_dir
    acked: dict[str, tuple[str, np.ndarray]] = {}
    sent: set[str] = set()
    for round_, target in enumerate((250, 700)):
        writers = Writers(daemon, count=6, round_=round_)
        writers.start()
        writers.wait_for(target - len(acked))
        daemon.proc.kill()  # SIGKILL, in the middle of the stream
        daemon.proc.wait(timeout=10)
        writers.join()
        acked.update(writers.acked)
        sent |= writers.sent
        daemon = make_daemon(env=ENV, state=state)
        with daemon.client(timeout=60) as client:
            present = export_all(client)
            missing = [i for i in acked if i not in present]
            assert not missing, f"{len(missing)} acknowledged episodes lost"
            assert all(present[i] == acked[i][0] for i in acked)
            strangers = [t for t in present.values() if t not in sent]
            assert not strangers, f"episodes nobody sent: {strangers[:5]}"
            stats = client.call("memory.stats")
            assert stats["episodes"] == len(present) == stats["index"]["vectors"]
            for ident, (_, vector) in acked.items():
                hits = client.call("memory.recall", {"vector": vector.tolist(), "k": 3,
                                                     "weights": {"vector": 1, "recency": 0, "importance": 0}})["hits"]
                assert ident in [h["id"] for h in hits]
    assert len(acked) >= 700
