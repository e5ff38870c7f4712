"""The MCP tools' table: what each sends to the daemon, what a model reads back, the schemas."""

from __future__ import annotations

import pytest
from engram.mcpserver.tools import TOOLS, input_schema, structured
from pydantic import ValidationError

METHODS = {
    "remember": "memory.remember", "recall": "memory.recall", "forget": "memory.forget", "ask": "route.ask",
    "graph_query": "memory.graph.query", "audit_prove": "audit.prove", "status": "system.status",
    "plan": "task.plan", "execute": "task.submit", "task_status": "task.get",
}


def params(tool: str, **arguments):
    spec = TOOLS[tool]
    return spec.params(spec.input.model_validate(arguments))


def test_each_tool_forwards_to_its_method_with_a_closed_schema():
    assert {name: spec.method for name, spec in TOOLS.items()} == METHODS
    for spec in TOOLS.values():
        schema = input_schema(spec.input)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert "title" not in schema and all("title" not in p for p in schema["properties"].values())
        assert all(p.get("description") for p in schema["properties"].values()), spec.name
        assert ("namespace" in schema["properties"]) == spec.namespaced


def test_params_sent_to_the_daemon():
    assert params("remember", text="hi", tags=["a"]) == {
        "items": [{"text": "hi", "tags": ["a"], "kind": "note", "importance": 0.5, "pinned": False, "source": "mcp"}]
    }
    assert params("recall", query="q") == {"query": "q", "k": 5}
    assert params("recall", query="q", k=3, session="s", tags=["t"], time_from="2025-01-01T00:00:00Z", namespace="n") == {
        "query": "q", "k": 3, "namespace": "n", "filter": {"session": "s", "tags": ["t"], "time_from": "2025-01-01T00:00:00Z"},
    }
    assert params("ask", question="why?") == {"question": "why?"}
    assert params("ask", question="why?", k=2, session="s") == {"question": "why?", "k": 2, "session": "s"}
    assert params("forget", ids=["ep_1"]) == {"ids": ["ep_1"]}
    assert params("audit_prove", seq=4) == {"seq": 4}
    assert params("status") == {}
    plan = {"steps": [{"id": "a", "tool": "memory.recall", "args": {"query": "q"}},
                      {"id": "b", "tool": "memory.get", "args": {"ids": [{"$from": "a.hits.0.id"}]}, "needs": ["a"]}]}
    sent = {"steps": [{**plan["steps"][0], "needs": []}, plan["steps"][1]]}
    assert params("execute", plan=plan) == {"plan": sent}
    assert params("execute", plan=plan, deadline=30, namespace="n") == {"plan": sent, "deadline": 30, "namespace": "n"}
    assert params("execute", goal="find the heron", namespace="n") == {"goal": "find the heron", "namespace": "n"}
    assert params("plan", goal="find the heron") == {"goal": "find the heron"}
    assert params("task_status", task_id="tk_1f") == {"task_id": "tk_1f", "outputs": False}


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("remember", {"text": ""}),
        ("remember", {"text": "x", "importance": 2}),
        ("recall", {"query": "x", "k": 51}),
        ("forget", {"ids": []}),
        ("audit_prove", {"seq": -1}),
        ("graph_query", {"concept": "x", "direction": "up"}),
        ("status", {"verbose": True}),
        ("recall", {"query": "x", "namespace": "has space"}),
        ("execute", {"plan": {"steps": []}}),
        ("execute", {"plan": {"steps": [{"id": "a"}]}}),
        ("execute", {"plan": {"steps": [{"id": "a", "tool": "memory.recall", "colour": "red"}]}}),
        ("task_status", {"task_id": "not-a-task"}),
        ("plan", {}),
        ("plan", {"goal": ""}),
        ("execute", {"goal": "x" * 4001}),
    ],
)
def test_arguments_outside_the_schema_are_refused(tool, arguments):
    with pytest.raises(ValidationError):
        TOOLS[tool].input.model_validate(arguments)


def test_texts_for_the_model():
    hit = {"id": "ep_1", "time": 0.0, "score": 0.912, "text": "word " * 200}
    text = TOOLS["recall"].text({"hits": [hit], "namespace": "n"})
    assert text.startswith("1 memory, best first:\n1. [ep_1, 1970-01-01 00:00 UTC, score 0.91] word word")
    assert len(text.splitlines()[1]) < 400 and text.endswith("…")
    assert TOOLS["recall"].text({"hits": [], "namespace": "n"}) == "No memories match."
    assert TOOLS["forget"].text({"forgotten": 2}) == "Forgot 2 memories."
    answer = {"answer": "42.", "sources": [{"tier": "episodic", "id": "ep_9", "text": "t", "score": 1.0}]}
    assert TOOLS["ask"].text(answer) == "42.\n\nSources: ep_9 (episodic)"
    assert structured([1, 2]) == {"result": [1, 2]} and structured({"a": 1}) == {"a": 1}
    planned = {"plan": {"steps": [{"id": "a", "tool": "memory.recall"}]}, "planned_by": ["ollama"], "replies": 2, "examples": 0}
    assert TOOLS["plan"].text(planned) == (
        'Plan of 1 step(s), made by ollama in 2 reply(ies); execute runs it as it is (pass it as plan):\n'
        '{"steps":[{"id":"a","tool":"memory.recall"}]}'
    )
    assert TOOLS["execute"].text({"task_id": "tk_1", "state": "queued"}) == "Task tk_1 is queued; task_status tells how it goes."
    failed = {"code": -32004, "reason": "step_timeout", "message": "step b ran past 5 s"}
    status = {"task": {"task_id": "tk_1", "state": "failed", "steps": 2, "steps_done": 1, "error": failed},
              "steps": [{"id": "a", "tool": "memory.recall", "state": "done"},
                        {"id": "b", "tool": "memory.get", "state": "failed", "error": failed}]}
    assert TOOLS["task_status"].text(status) == (
        "Task tk_1: failed, 1/2 steps done.\n- a (memory.recall): done\n"
        "- b (memory.get): failed, error -32004 step_timeout: step b ran past 5 s"
    )
