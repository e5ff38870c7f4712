"""route.ask hands its namespace and session to memory's methods: it must accept only what they
accept, or the difference surfaces as an internal error instead of -32602 (found by
tests/e2e/test_fuzz.py: ``{"question": "0", "namespace": ";"}`` was -32603)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engram.memory.api import RecallParams, WorkingListParams
from engram.ask.api import AskParams


@pytest.mark.parametrize("namespace", [";", "", "a b", "é", "x" * 129])
def test_a_namespace_memory_refuses_is_refused_by_route_ask(namespace):
    with pytest.raises(ValidationError):
        RecallParams(query="q", namespace=namespace)
    with pytest.raises(ValidationError) as refused:
        AskParams(question="q", namespace=namespace)
    assert refused.value.errors()[0]["loc"] == ("namespace",)


@pytest.mark.parametrize("session", ["", "s" * 257])
def test_a_session_memory_refuses_is_refused_by_route_ask(session):
    with pytest.raises(ValidationError):
        WorkingListParams(session=session)
    with pytest.raises(ValidationError) as refused:
        AskParams(question="q", session=session)
    assert refused.value.errors()[0]["loc"] == ("session",)


def test_what_memory_accepts_route_ask_accepts():
    params = AskParams(question="q", namespace="team:a_b.c@d-1", session="s" * 256)
    assert RecallParams(query="q", namespace=params.namespace).namespace == "team:a_b.c@d-1"
    assert WorkingListParams(session=params.session, namespace=params.namespace).session == "s" * 256
