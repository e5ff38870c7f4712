"""The web console in a real headless Chromium against the real daemon and its gateway: the page
loads under its strict CSP with no console error, a token opens it, a search finds the episode
remembered, an audit entry's inclusion proof verifies in the browser (and tampered bytes or a
tampered checkpoint fail), the graph view draws the concepts, live events show a new memory."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from engram_bench.toy_models import write_model
from onnx import TensorProto, helper, numpy_helper

from tests.browser import Browser, find_chromium
from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: make install-test installs Debian's chromium package (apt-get, as root)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A cascade of two toy classifiers: the fast one is the input's own logits, the slow one the same
# with classes 1 and 2 swapped, so they agree on class 0 only. The fixture's confident inputs are
# class 0 and its doubtful ones class 1: escalating the doubtful third makes every answer right.
ROUTES = [{"name": "toy", "fast": "model:fast", "slow": "model:swapped", "mode": "cascade", "threshold": 0.8}]


def _matmul_model(path: Path, matrix: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["scores"])], "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(matrix.astype(np.float32), "W")],
    )
    return write_model(path, graph)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str, str]]:
    port = free_port()
    models = tmp_path_factory.mktemp("models")
    with running_daemon({"ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}", "ENGRAM_ROUTER__ROUTES": json.dumps(ROUTES)}) as daemon:
        for name, matrix in {"fast": np.eye(3), "swapped": np.eye(3)[:, [0, 2, 1]]}.items():
            path = _matmul_model(models / f"{name}.onnx", matrix)
            daemon.call("models.add", {"name": name, "path": str(path), "task": "classify"})
        for i in range(12):  # threshold 1: both targets run, every decision is on the curve
            row = [0.5, 1.0, 0.5] if i % 3 == 0 else [1.0 + i / 4, 1.0, 0.5]
            daemon.call("route.run", {"route": "toy", "tensor": {"dtype": "float32", "shape": [1, 3], "data": row},
                                      "threshold": 1.0, "use_cache": False})
        daemon.call("memory.remember", {"items": [
            {"text": "The lighthouse keeper logs the tide every evening", "tags": ["sea", "routine"], "session": "coast"},
            {"text": "Invoices are paid on the first Monday of the month", "tags": ["finance"]},
        ]})
        daemon.call("memory.graph.upsert", {"relations": [
            {"src": "lighthouse", "dst": "coast", "type": "located_on"},
            {"src": "keeper", "dst": "lighthouse", "type": "works_at"},
            {"src": "coast", "dst": "sea", "type": "borders"},
        ]})
        token = daemon.call("token.create", {"name": "console", "owner": True})["token"]
        yield daemon, f"http://127.0.0.1:{port}", token


def test_console_files_carry_strict_headers_and_nothing_else_is_served(console):
    _, url, _ = console
    with httpx.Client(base_url=url) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script type=\"module\" src=\"/console/main.js\">" in page.text and "<script>" not in page.text
        script = http.get("/console/proof.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-security-policy"] == csp
        for path in ("/console/nothing.js", "/console/..%2Fapp.py", "/console/%2e%2e%2fapp.py"):
            assert http.get(path).status_code == 404, path


def test_event_stream_refusals_are_specific(console):
    _, url, token = console
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url) as http:
        assert http.get("/v1/events").status_code == 401
        unknown = http.get("/v1/events", params={"topics": "nothing.*"}, headers=auth)
        assert unknown.status_code == 400
        data = unknown.json()["error"]["data"]
        assert (data["reason"], data["field"]) == ("unknown_topic", "topics.0")
        empty = http.get("/v1/events", params={"topics": "memory.*,"}, headers=auth)
        assert empty.json()["error"]["data"] == {"reason": "empty_topic", "field": "topics"}
        bad_queue = http.get("/v1/events", params={"queue": "many"}, headers=auth)
        assert bad_queue.json()["error"]["data"] == {"reason": "bad_queue", "field": "queue"}
        bad_overflow = http.get("/v1/events", params={"overflow": "explode"}, headers=auth)
        assert bad_overflow.status_code == 400 and bad_overflow.json()["error"]["data"]["field"] == "overflow"
        # overflow=disconnect with a queue of one: a burst ends the stream with a closed event.
        with http.stream("GET", "/v1/events", params={"topics": "request.*", "queue": "1", "overflow": "disconnect"},
                         headers=auth, timeout=15) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: subscribed"
            with httpx.Client(base_url=url, headers=auth) as other:
                other.post("/rpc", json=[{"jsonrpc": "2.0", "id": i, "method": "system.ping"} for i in range(50)])
            rest = list(lines)  # the stream ends by itself
        assert "event: closed" in rest
        closed = json.loads(rest[rest.index("event: closed") + 1].removeprefix("data: "))
        assert closed["reason"] == "overflow" and closed["dropped"] >= 1


@needs_chromium
def test_console_in_headless_chromium(console):
    daemon, url, token = console
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        browser.navigate(url + "/")
        browser.wait_for("document.documentElement.dataset.console === 'loaded'")
        # Every field says what it is by a label of its own (no hint text that vanishes as one types).
        assert browser.evaluate("[...document.querySelectorAll('input, select')]"
                                ".filter(e => e.labels.length === 0 || e.placeholder).map(e => e.id)") == []

        # A wrong token is refused with the gateway's reason; the right one opens the console.
        browser.evaluate("document.querySelector('#token').value = 'not-a-token';"
                         "document.querySelector('#login-form').requestSubmit()")
        assert "bad_token" in browser.wait_for("document.querySelector('#login-error').textContent")
        browser.evaluate(f"document.querySelector('#token').value = {json.dumps(token)};"
                         "document.querySelector('#login-form').requestSubmit()")
        browser.wait_for("document.body.dataset.ready === 'true'")
        assert browser.evaluate("sessionStorage.getItem('engram.token')") == token
        assert token not in browser.evaluate("location.href")

        # Browse (the timeline) shows both episodes; a search recalls the lighthouse one first.
        assert browser.wait_for("document.querySelectorAll('#memory-results .episode').length") == 2
        browser.evaluate("document.querySelector('#memory-query').value = 'who records the tides?';"
                         "document.querySelector('#memory-search').requestSubmit()")
        browser.wait_for("document.querySelector('#memory-status').textContent.includes('memories in uid:')")
        first = browser.evaluate("document.querySelector('#memory-results .episode').textContent")
        assert "lighthouse keeper" in first
        # An episode's detail: memory.get, the whole episode.
        browser.evaluate("document.querySelector('#memory-results .episode').click()")
        detail = browser.wait_for("document.querySelector('#memory-detail table')?.textContent")
        assert all(part in detail for part in ('"coast"', '"sea"', '"routine"', "access_count")), detail
        # A tag filters the browse list.
        browser.evaluate("document.querySelector('#browse-tag').value = 'finance';"
                         "document.querySelector('#memory-browse').requestSubmit()")
        browser.wait_for("document.querySelector('#memory-status').textContent.includes('tagged finance')")
        shown = browser.evaluate("[...document.querySelectorAll('#memory-results .episode')].map(e => e.textContent)")
        assert len(shown) == 1 and shown[0].startswith("Invoices")

        # The graph: three relations around the lighthouse, drawn as nodes and edges.
        browser.evaluate("location.hash = '#graph'")
        browser.evaluate("document.querySelector('#graph-concept').value = 'lighthouse';"
                         "document.querySelector('#graph-form').requestSubmit()")
        browser.wait_for("document.querySelectorAll('#graph-svg .node').length === 4")
        names = browser.evaluate("[...document.querySelectorAll('#graph-svg .node')].map(n => n.dataset.concept).sort()")
        assert names == ["coast", "keeper", "lighthouse", "sea"]
        assert browser.evaluate("document.querySelectorAll('#graph-svg line.edge').length") == 3

        # The audit log: the oldest entry shown has its proof verified in the browser against the
        # signed checkpoint.
        browser.evaluate("location.hash = '#audit'")
        seq = browser.wait_for("[...document.querySelectorAll('#audit-table button.verify')].pop()?.dataset.seq", timeout=10)
        browser.evaluate(f"document.querySelector('#audit-table button.verify[data-seq=\"{seq}\"]').click()")
        verdict = browser.wait_for(
            "(c => c && !c.textContent.startsWith('verifying') && c.textContent)"
            f"(document.querySelector('#audit-table tr[data-seq=\"{seq}\"] td:last-child'))")
        assert verdict.startswith("verified: in the tree of"), verdict
        vkey = daemon.call("audit.pubkey")["vkey"]
        assert vkey.split("+")[0] in verdict
        # Tampered bytes, or a checkpoint whose root was changed, fail in the same code.
        tampered = browser.evaluate("""(async () => {
            const views = await import('/console/views.js'), proof = await import('/console/proof.js');
            const rpc = await import('/console/rpc.js');
            const { canonical } = await rpc.call('audit.entry', { seq: 1 });
            const bytes = proof.fromBase64(canonical);
            const good = await views.proveEntry(1, bytes);
            bytes[bytes.length - 3] ^= 1;
            const outcomes = [good.size > 1];
            try { await views.proveEntry(1, bytes); outcomes.push('accepted'); } catch (e) { outcomes.push(e.message); }
            const cp = await rpc.call('audit.checkpoint', { fresh: false });
            const lines = cp.note.split('\\n');
            lines[2] = proof.toBase64(new Uint8Array(32));
            const { vkey } = await rpc.call('audit.pubkey');
            try { await proof.openCheckpoint(lines.join('\\n'), await proof.parseVerifierKey(vkey)); outcomes.push('accepted'); }
            catch (e) { outcomes.push(e.message); }
            return outcomes;
        })()""")
        assert tampered[0] is True
        assert tampered[1] == "proof: the path leads to another root than the signed checkpoint's", tampered
        assert tampered[2].startswith("checkpoint: invalid signature"), tampered

        # Live events: following memory.* shows an episode remembered after the page opened.
        browser.evaluate("location.hash = '#events'")
        browser.evaluate("document.querySelector('#events-topics').value = 'memory.*';"
                         "document.querySelector('#events-form').requestSubmit()")
        browser.wait_for("document.querySelector('#events-status').textContent.startsWith('following')")
        daemon.call("memory.remember", {"items": [{"text": "The fog horn sounded twice"}]})
        live = browser.wait_for("document.querySelector('#events-list li[data-topic=\"memory.remembered\"]')?.textContent")
        assert "memory.remembered" in live

        # The router's accuracy-cost curve: one line from (0, the fast agreement) to (1, 1).
        curve = daemon.call("route.curve", {"route": "toy"})
        browser.evaluate("location.hash = '#router'")
        browser.wait_for("document.querySelector('#router-status').textContent.includes('1 with a curve')")
        drawn = browser.evaluate("document.querySelector('#router-svg polyline.curve[data-route=\"toy\"]')"
                                 ".getAttribute('points').split(' ').length")
        assert drawn == len(curve["points"]) > 2
        assert curve["samples"] == 12 and curve["points"][0] == {"threshold": 0.0, "slow_share": 0.0, "accuracy": round(8 / 12, 6)}
        assert any(p["slow_share"] < 0.5 and p["accuracy"] == 1.0 for p in curve["points"])  # the doubtful escalated

        # Sleep reports: none, said so; after a run, its report with its stages.
        browser.evaluate("location.hash = '#sleep'")
        assert browser.wait_for("document.querySelector('#sleep-status').textContent") == "no consolidation run yet"
        report = daemon.call("sleep.run", {"wait": True})["report"]
        browser.evaluate("location.hash = '#memory'; location.hash = '#sleep'")
        shown = browser.wait_for("document.querySelector('#sleep-reports .report')?.textContent")
        assert f"run {report['run']}" in shown and report["outcome"] in shown
        assert browser.evaluate("document.querySelectorAll('#sleep-reports .report tr').length") == len(report["stages"]) + 1

        # The only error the page met is the refused wrong token's 401 (Chromium logs failed
        # loads): no exception, no console.error, no CSP violation.
        errors = browser.errors()
        assert len(errors) == 1 and "status of 401" in errors[0] and errors[0].endswith("/rpc"), errors


NOBODY_FOLLOWS = """
[[rule]]
name = "nobody-follows-events"
effect = "allow"
principals = ["uid:65534"]
actions = ["events.*", "memory.*"]
"""


def _memory_events(url: str, token: str, until_namespace: str, subscribed: threading.Event) -> list[dict]:
    """The memory.remembered events a stream of ``token`` delivers, until one of ``until_namespace``."""
    seen = []
    with httpx.stream("GET", f"{url}/v1/events", params={"topics": "memory.remembered"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30) as stream:
        for line in stream.iter_lines():
            if line == "event: subscribed":
                subscribed.set()
            elif line.startswith("data: ") and '"topic"' in line:
                seen.append(json.loads(line.removeprefix("data: ")))
                if seen[-1]["data"]["namespace"] == until_namespace:
                    return seen
    return seen


def test_event_stream_keeps_the_audience_rule(make_daemon, state_dir):
    """Someone other than the owner, granted events.subscribe, sees the events about their own
    namespace and not the owner's; the owner sees both."""
    policy = state_dir.parent / "policy.d"
    policy.mkdir()
    (policy / "nobody.toml").write_text(NOBODY_FOLLOWS)
    port = free_port()
    daemon = make_daemon(env={"ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}", "ENGRAM_POLICY__FILES": json.dumps([str(policy)])})
    url = f"http://127.0.0.1:{port}"
    owner = daemon.call("token.create", {"name": "owner", "owner": True})["token"]
    nobody = daemon.call("token.create", {"name": "nobody", "uid": 65534})["token"]
    seen: dict[str, list[dict]] = {}
    ready = {"owner": threading.Event(), "nobody": threading.Event()}

    def follow(who: str, token: str) -> None:
        seen[who] = _memory_events(url, token, "uid:65534", ready[who])

    readers = [threading.Thread(target=follow, args=(who, token)) for who, token in (("owner", owner), ("nobody", nobody))]
    for reader in readers:
        reader.start()
    assert all(event.wait(20) for event in ready.values())
    daemon.call("memory.remember", {"items": [{"text": "the owner's note", "vector": [1.0, 0.0, 0.0]}]})
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {nobody}"}) as http:
        answer = http.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "memory.remember",
                                         "params": {"items": [{"text": "nobody's note", "vector": [0.0, 1.0, 0.0]}]}}).json()
        assert "result" in answer, answer
    for reader in readers:
        reader.join(30)
    assert [e["data"]["namespace"] for e in seen["nobody"]] == ["uid:65534"]
    assert [e["data"]["namespace"] for e in seen["owner"]] == [f"uid:{os.getuid()}", "uid:65534"]
