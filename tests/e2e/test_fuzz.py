"""Property-based fuzzing of every RPC method over the real socket (issue #16).

For each method of the method table (one JSON Schema per method in ``schemas/methods/``), params
are drawn from its schema and from mutations of it (tests/e2e/fuzz_params.py) and sent as raw
frames to one daemon shared by the whole run. The properties, for every frame:

- it gets a JSON-RPC answer: a result, or an error that is never -32603 (internal error);
  -32602 always carries ``data.reason``;
- the daemon is still running and answers ``system.ping`` on a fresh connection;

and, after the whole run, what was stored before it is intact: pinned episodes in a namespace
the fuzz never names are all still there, unchanged, listed and recalled, and the audit log
still verifies offline against the key the daemon had before the run; and the daemon logged no
error (a background task's failure is logged, never answered).

How much is drawn is a hypothesis settings profile, chosen with ``HYPOTHESIS_PROFILE``:
``ci`` (the default: a few examples per method, the same on every run, part of ``make test``)
or ``fuzz`` (``make fuzz``: hundreds per method, a fresh random seed each run).

Every method is fuzzed, the owner-only ones too (the test runs as the daemon's owner): none
stops the daemon (engramd stops on SIGTERM only; system.reload and policy.reload re-read the
same configuration and policy). The destructive ones are kept off the stored data by what they
are never given:

- the sentinel namespace (memory.forget with ``all``, memory.import, sleep.run, ...): no
  example names it, and its episodes are pinned, which sleep's forgetting never archives;
- the names of the installed models, for the methods that change or delete a model
  (models.remove, .add, .import, .quantize, .sign): no example of theirs names one, so the
  embedder the sentinel check recalls with stays. models.import without a name may import the
  default embedder over itself (the same pinned files): the sentinel recall checks that memory
  copes. Every other method is given the models' names (infer.run on the embedder, ...).

Random text names nothing that exists, so the strings drawn include known ones: the models,
the event topics, and the ids, session, key and concepts of a few objects stored first in a
namespace of the fuzz's own.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.conftest import DaemonProcess, RawConnection, running_daemon
from tests.e2e.fuzz_params import MethodSchema, encode_request, mentions, method_schemas, params_for, valid_params

# Hypothesis keeps caches (and would keep its example database) in .hypothesis/ of the working
# directory: not in the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "engram-hypothesis")

# The hostile values are large on purpose, and an example takes two round trips to the daemon.
_BIG_SLOW_DRAWS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
# make test: a few examples of every method, the same ones on every run (derandomize), and no
# example database: a failure prints its params, which is what a CI log needs.
settings.register_profile(
    "ci", max_examples=4, derandomize=True, database=None, deadline=None, suppress_health_check=_BIG_SLOW_DRAWS
)
# make fuzz: many examples per method on a new seed each run.
settings.register_profile(
    "fuzz", max_examples=250, database=None, deadline=None, suppress_health_check=_BIG_SLOW_DRAWS, print_blob=True
)
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120 if PROFILE_NAME == "ci" else 7200)]

SENTINEL_NAMESPACE = "fuzz-sentinel"
FUZZ_NAMESPACE = "fuzz"  # where the known objects live; memory.forget may empty it
MODEL_CHANGING = frozenset({"models.remove", "models.add", "models.import", "models.quantize", "models.sign"})
SENTINELS = [
    {
        "text": "The lighthouse keeper logs the tide at dawn.",
        "kind": "fact",
        "tags": ["sea", "routine"],
        "metadata": {"n": 1, "nested": {"ok": [1, 2.5, None]}},
        "session": "sentinel-session",
        "time": 1_700_000_000.0,
        "pinned": True,
        "importance": 0.9,
        "source": "test_fuzz",
    },
    {"text": "Bread rises faster in a warm kitchen.", "kind": "note", "tags": ["baking"], "pinned": True},
    {"text": "Zürich trams run every seven minutes. 🚋", "kind": "note", "metadata": {"ünï": "cödé"}, "pinned": True},
]
# What a client said about each episode (the rest, access counts and scores, may change).
STORED_FIELDS = ("id", "text", "kind", "tags", "metadata", "session", "time", "pinned", "source")

# Params that once got -32603, by method: sent first on every run (explicit examples), whatever
# the profile then draws.
FOUND_BY_FUZZING: dict[str, list[Any]] = {
    "route.ask": [{"question": "0", "namespace": ";"}],  # a namespace memory's methods refuse
}

_REQUEST_IDS = itertools.count(1)
_INTERNAL_ERROR = -32603


def answer(daemon: DaemonProcess, method: str, params: Any, *, ascii_only: bool = True) -> dict[str, Any]:
    """Send one request as a raw frame; its response (notifications before it are skipped)."""
    request_id = next(_REQUEST_IDS)
    with RawConnection(daemon.socket, timeout=120) as conn:
        conn.send(encode_request(request_id, method, params, ascii_only=ascii_only))
        while True:
            reply = conn.recv()
            if isinstance(reply, dict) and "id" in reply:
                break
    # A frame refused before parsing (too deep) cannot be matched to its id: it is answered with null.
    assert reply["id"] in (request_id, None), reply
    assert ("result" in reply) != ("error" in reply), reply
    return reply


def check_reply(method: str, params: Any, reply: dict[str, Any]) -> None:
    error = reply.get("error")
    if error is None:
        return
    assert error["code"] != _INTERNAL_ERROR, f"{method} {params!r:.2000}: {error}"
    if error["code"] == -32602:
        assert error["data"]["reason"], error


def assert_serving(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.logs()[-4000:]
    pong = answer(daemon, "system.ping", {"echo": "alive"})
    assert pong.get("result") == {"pong": True, "echo": "alive"}, pong


class Tally:
    """What each method answered during the run: results and error codes."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter[str]] = {}

    def add(self, method: str, reply: dict[str, Any]) -> None:
        outcome = "result" if "result" in reply else str(reply["error"]["code"])
        self.outcomes.setdefault(method, Counter())[outcome] += 1

    def line(self, method: str) -> str:
        counts = self.outcomes.get(method, Counter())
        return f"{method:24} " + " ".join(f"{outcome}:{n}" for outcome, n in sorted(counts.items()))

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.outcomes.values())


def fuzz_method(
    daemon: DaemonProcess, schema: MethodSchema, known: list[str], protected: frozenset[str], tally: Tally
) -> None:
    @settings(PROFILE)
    @given(params=params_for(schema, known), ascii_only=st.booleans())
    def every_frame_is_answered(params: Any, ascii_only: bool) -> None:
        assume(not mentions(params, protected))
        reply = answer(daemon, schema.name, params, ascii_only=ascii_only)
        tally.add(schema.name, reply)
        check_reply(schema.name, params, reply)
        assert_serving(daemon)

    for params in FOUND_BY_FUZZING.get(schema.name, []):
        every_frame_is_answered = example(params=params, ascii_only=True)(every_frame_is_answered)
    every_frame_is_answered()


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as process:
        yield process


def store_sentinels(daemon: DaemonProcess) -> list[dict[str, Any]]:
    ids = daemon.call("memory.remember", {"items": SENTINELS, "namespace": SENTINEL_NAMESPACE})["ids"]
    return daemon.call("memory.get", {"ids": ids, "namespace": SENTINEL_NAMESPACE})["episodes"]


def store_known_objects(daemon: DaemonProcess) -> list[str]:
    """Objects in FUZZ_NAMESPACE for the fuzz to find; the strings that name them, and the
    models and event topics."""
    session, key = "fuzz-session", "fuzz-key"
    episodes = [{"text": "Ada lives in Paris.", "session": session}, {"text": "Paris is in France."}]
    ids = daemon.call("memory.remember", {"items": episodes, "namespace": FUZZ_NAMESPACE})["ids"]
    item = {"session": session, "key": key, "content": "planning a trip", "namespace": FUZZ_NAMESPACE}
    daemon.call("memory.working.put", item)
    relations = [{"src": "Ada", "dst": "Paris", "type": "lives_in"}, {"src": "Paris", "dst": "France", "type": "is_in"}]
    daemon.call("memory.graph.upsert", {"relations": relations, "namespace": FUZZ_NAMESPACE})
    models = daemon.call("models.list")
    topics = daemon.call("events.topics")["topics"]
    names = [model["name"] for model in models["models"]] + [models["default_embedder"]]
    return [FUZZ_NAMESPACE, session, key, *ids, "Ada", "Paris", "France", *names, *topics]


def check_sentinels(daemon: DaemonProcess, stored: list[dict[str, Any]]) -> None:
    ids = [episode["id"] for episode in stored]
    now = daemon.call("memory.get", {"ids": ids, "namespace": SENTINEL_NAMESPACE})["episodes"]
    assert [{f: e[f] for f in STORED_FIELDS} for e in now] == [{f: e[f] for f in STORED_FIELDS} for e in stored]
    listed = daemon.call("memory.list", {"namespace": SENTINEL_NAMESPACE, "limit": 100})["episodes"]
    assert sorted(episode["id"] for episode in listed) == sorted(ids)
    for episode in stored:
        hits = daemon.call("memory.recall", {"query": episode["text"], "k": 1, "namespace": SENTINEL_NAMESPACE})["hits"]
        assert [hit["id"] for hit in hits] == [episode["id"]]


def check_audit_log(daemon: DaemonProcess, pubkey: Path) -> None:
    daemon.call("audit.checkpoint", {"fresh": True})  # sign the run's entries too
    verify = ["audit", "verify", "--state-dir", str(daemon.state_dir), "--pubkey", str(pubkey), "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", *verify],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["entries"] > 0


def test_the_valid_params_drawn_are_what_each_schema_allows() -> None:
    # A schema keyword the strategies do not know fails here (UnsupportedSchema), and a draw
    # the schema does not allow would make "valid" examples mutations in disguise.
    for schema in method_schemas():
        validator = jsonschema.Draft202012Validator(schema.params)

        @settings(PROFILE, max_examples=3, derandomize=True)
        @given(params=valid_params(schema))
        def allowed(params: dict[str, Any]) -> None:
            validator.validate(params)

        allowed()


def test_every_method_answers_every_params_and_keeps_the_data(daemon: DaemonProcess, tmp_path: Path) -> None:
    stored = store_sentinels(daemon)
    pubkey = tmp_path / "audit.pub"
    pubkey.write_text(daemon.call("audit.pubkey")["vkey"] + "\n")
    known = store_known_objects(daemon)
    models = daemon.call("models.list")
    model_names = {model["name"] for model in models["models"]} | {models["default_embedder"]}

    schemas = method_schemas()
    assert len(schemas) > 50  # schemas/methods/ holds the whole method table
    tally = Tally()
    # Every method is fuzzed even after one fails, so that a long run reports every bug it
    # finds; only a daemon that is gone ends the run early.
    failures = []
    for schema in schemas:
        protected = {SENTINEL_NAMESPACE} | (model_names if schema.name in MODEL_CHANGING else set())
        try:
            fuzz_method(daemon, schema, known, frozenset(protected), tally)
        except Exception as exc:
            failures.append(f"--- {schema.name}\n" + "".join(traceback.format_exception(exc))[-6000:])
            if daemon.proc is None or daemon.proc.poll() is not None:
                break
        finally:
            print(tally.line(schema.name), flush=True)  # make fuzz shows the run's progress
    print(f"{PROFILE_NAME}: {tally.total()} examples over {len(tally.outcomes)} methods", flush=True)
    assert not failures, "\n".join(failures)

    assert_serving(daemon)
    check_sentinels(daemon, stored)
    check_audit_log(daemon, pubkey)
    # Nothing failed out of sight either: a background task's exception is logged, not answered.
    logged_errors = [record for record in daemon.records() if record.get("level") in ("error", "critical")]
    assert not logged_errors, logged_errors[:5]
