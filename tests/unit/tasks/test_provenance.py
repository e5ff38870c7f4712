"""Provenance and proofs with a real audit log: each finished step gets a ``task.step`` entry with
its task, needs, tool and input/output hashes, its input is stored content-addressed, and
``task.prove``'s bundle verifies offline with the log's key, and fails when an entry, a proof, the
key or the task is not what it should be."""

from __future__ import annotations

import base64
import copy
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.audit.bundle import BUNDLE_FORMAT, bundle_ok, verify_bundle
from engram.audit.canonical import canonical_json
from engram.audit.events import AUDIT_EVENTS
from engram.audit.log import AuditLog
from engram.audit.settings import AuditSettings
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import Conflict
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.methods import RequestContext
from engram.signing import Verifier, generate_signer
from engram.tasks.api import TaskGetParams, TaskProveParams, TaskSubmitParams
from engram.tasks.events import TASK_EVENTS
from engram.tasks.service import Tasks
from engram.tasks.settings import TaskSettings
from engram.tasks.store import canonical_json as task_json
from engram.tasks.store import digest_of

OWNER = Principal(uid=os.getuid(), gid=os.getgid(), pid=1)

PLAN = {"steps": [
    {"id": "a", "tool": "put", "args": {"text": "t"}},
    {"id": "b", "tool": "ask", "args": {"id": {"$from": "a.ids.0"}}, "needs": ["a"]},
    {"id": "c", "tool": "put", "args": {"text": "u"}, "needs": ["a", "b"]},
]}


class Tools:
    names = frozenset({"put", "ask", "held"})

    def __init__(self) -> None:
        self.release = anyio.Event()

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        return False

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        if tool == "held":
            await self.release.wait()
        if tool == "ask":
            return {"answer": f"about {args['id']}", "provider": "echo"}
        return {"ids": [f"id-{args.get('text')}"]}


def _ctx() -> RequestContext:
    return RequestContext(principal=OWNER, connection=None, request=1)  # type: ignore[arg-type]


async def _run(tasks: Tasks, plan: dict[str, Any]) -> str:
    submitted = await tasks.submit(_ctx(), TaskSubmitParams(plan=plan))
    with anyio.fail_after(10):
        while (await tasks.get(_ctx(), TaskGetParams(task_id=submitted.task_id))).task.state != "done":
            await anyio.sleep(0.01)
    return submitted.task_id


async def _proven(tmp_path: Path, db: Path) -> tuple[dict[str, Any], Verifier, str, Path]:
    """A bundle of a three-step task, the log's key, the task id, and the database."""
    bus = EventBus((*CORE_EVENTS, *AUDIT_EVENTS, *TASK_EVENTS))
    async with AuditLog(AuditSettings(), tmp_path, db, bus, Metrics()) as audit, \
            Tasks(TaskSettings(), db, Tools(), bus, audit=audit, owner_uid=OWNER.uid) as tasks:
        task_id = await _run(tasks, PLAN)
        bundle = (await tasks.prove(_ctx(), TaskProveParams(task_id=task_id))).model_dump(mode="json")
        key = audit.keys.current
    return bundle, key, task_id, db


def _entry(bundle: dict[str, Any], index: int) -> dict[str, Any]:
    return json.loads(base64.b64decode(bundle["entries"][index]["canonical"]))


def _failed(checks: list[Any]) -> list[str]:
    return [check.what for check in checks if not check.ok]


async def test_each_step_has_a_provenance_entry_and_its_input_is_stored(tmp_path, db):
    bundle, key, task_id, path = await _proven(tmp_path, db)
    assert bundle["format"] == BUNDLE_FORMAT and bundle["task_id"] == task_id
    assert [item["step_id"] for item in bundle["entries"]] == ["a", "b", "c"]
    b = _entry(bundle, 1)
    assert b["kind"] == "task.step" and b["task_id"] == task_id and b["parent_id"] == ["a"]
    assert b["principal"]["uid"] == OWNER.uid
    assert b["detail"] == {"step_id": "b", "tool": "ask", "provider": "echo"}
    assert b["input_hash"] == digest_of(task_json({"id": "id-t"}))  # the resolved args
    assert b["output_hash"] == digest_of(task_json({"answer": "about id-t", "provider": "echo"}))
    a, c = _entry(bundle, 0), _entry(bundle, 2)
    assert a["parent_id"] is None and a["detail"]["provider"] is None and c["parent_id"] == ["a", "b"]
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT step_id, audit_seq FROM tasks_steps WHERE task_id = ?", (task_id,)).fetchall())
        body = conn.execute("SELECT body FROM tasks_outputs WHERE hash = ?", (b["input_hash"],)).fetchone()[0]
    assert rows == {item["step_id"]: item["seq"] for item in bundle["entries"]}
    assert json.loads(body) == {"id": "id-t"}


async def test_a_good_bundle_verifies(tmp_path, db):
    bundle, key, _, _ = await _proven(tmp_path, db)
    checks = verify_bundle(bundle, [key])
    assert bundle_ok(checks), [check.as_dict() for check in checks]
    assert len(checks) == 1 + 2 * 3  # the signature, then provenance and inclusion of each entry


async def test_a_changed_output_hash_fails_its_inclusion(tmp_path, db):
    bundle, key, _, _ = await _proven(tmp_path, db)
    entry = _entry(bundle, 1)
    entry["output_hash"] = "0" * 64
    bundle["entries"][1]["canonical"] = base64.b64encode(canonical_json(entry)).decode()
    checks = verify_bundle(bundle, [key])
    assert not bundle_ok(checks)
    assert _failed(checks) == [f"entry {entry['seq']} (step 'b') inclusion"]


async def test_a_wrong_proof_fails(tmp_path, db):
    bundle, key, _, _ = await _proven(tmp_path, db)
    proof = bundle["entries"][0]["proof"]
    raw = bytearray(base64.b64decode(proof[0]))
    raw[0] ^= 1
    proof[0] = base64.b64encode(bytes(raw)).decode()
    assert _failed(verify_bundle(bundle, [key])) == [f"entry {bundle['entries'][0]['seq']} (step 'a') inclusion"]


async def test_a_wrong_key_fails_the_signature(tmp_path, db):
    bundle, _, _, _ = await _proven(tmp_path, db)
    other = Verifier(generate_signer(bundle["origin"])[1])
    checks = verify_bundle(bundle, [other])
    assert _failed(checks) == ["checkpoint signature"]
    assert "no valid signature" in checks[0].why


async def test_another_tasks_entries_and_a_malformed_bundle_fail(tmp_path, db):
    bundle, key, _, _ = await _proven(tmp_path, db)
    renamed = copy.deepcopy(bundle)
    renamed["task_id"] = "tk_" + "0" * 24
    assert len(_failed(verify_bundle(renamed, [key]))) == 3  # each entry's provenance
    duplicated = copy.deepcopy(bundle)
    duplicated["entries"].append(duplicated["entries"][0])
    assert _failed(verify_bundle(duplicated, [key])) == [f"entry {bundle['entries'][0]['seq']}"]
    assert _failed(verify_bundle({**bundle, "entries": []}, [key])) == ["bundle"]
    assert _failed(verify_bundle({**bundle, "format": "other"}, [key])) == ["bundle"]


async def test_an_unfinished_task_is_not_proven(tmp_path, db):
    bus = EventBus((*CORE_EVENTS, *AUDIT_EVENTS, *TASK_EVENTS))
    tools = Tools()
    async with AuditLog(AuditSettings(), tmp_path, db, bus, Metrics()) as audit, \
            Tasks(TaskSettings(), db, tools, bus, audit=audit, owner_uid=OWNER.uid) as tasks:
        submitted = await tasks.submit(_ctx(), TaskSubmitParams(plan={"steps": [{"id": "a", "tool": "held"}]}))
        with pytest.raises(Conflict) as raised:
            await tasks.prove(_ctx(), TaskProveParams(task_id=submitted.task_id))
        tools.release.set()
    assert raised.value.reason == "not_finished" and raised.value.data["task_id"] == submitted.task_id
