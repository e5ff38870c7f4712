"""route.ask's prompt building: most relevant first, within the character budget, each text once;
the template filled in one pass; the concept names a question may hold; the ask settings."""

from __future__ import annotations

import pytest
from engram.ask.prompt import Source, build_prompt, concept_candidates, fill_template
from engram.router.settings import RouterSettings
from pydantic import ValidationError


def test_most_relevant_first_across_tiers():
    sources = [
        Source("episodic", "ep1", "low episode", 0.2),
        Source("semantic", "rl1", "Ada lives in Paris", 0.9),
        Source("episodic", "ep2", "high episode", 0.8),
        Source("working", "k1", "the session's note", 0.9),
    ]
    context, used = build_prompt(sources, 10_000)
    assert [s.id for s in used] == ["k1", "rl1", "ep2", "ep1"]  # ties: working, then semantic
    assert context.splitlines() == [
        "- [working] the session's note", "- [semantic] Ada lives in Paris", "- [episodic] high episode",
        "- [episodic] low episode",
    ]


def test_budget_is_never_exceeded_and_a_shorter_line_may_still_fit():
    long = Source("episodic", "big", "x" * 500, 0.9)
    short = Source("episodic", "small", "short one", 0.5)
    first = Source("episodic", "top", "first", 0.95)
    context, used = build_prompt([long, short, first], 60)
    assert [s.id for s in used] == ["top", "small"] and len(context) <= 60
    for budget in range(80):
        context, _ = build_prompt([long, short, first], budget)
        assert len(context) <= budget
    assert build_prompt([short], 0) == ("", [])


def test_same_text_once_and_whitespace_flattened():
    a = Source("working", "k", "Ada  is\nhere", 0.7)
    b = Source("episodic", "e", "ada is here", 0.6)
    c = Source("episodic", "blank", "   ", 0.99)
    context, used = build_prompt([a, b, c], 1000)
    assert context == "- [working] Ada is here" and [s.id for s in used] == ["k"]


def test_template_filled_in_one_pass():
    template = "C:\n{context}\nQ: {question}"
    assert fill_template(template, "- [episodic] a {question}", "why {context}?") == "C:\n- [episodic] a {question}\nQ: why {context}?"


def test_concept_candidates():
    keys = concept_candidates("Where does Ada's sister, Grace Hopper, live?")
    assert "ada" in keys and "ada's" in keys and "grace hopper" in keys and "where" in keys
    assert keys.index("grace hopper") < keys.index("grace")  # longer names first
    assert concept_candidates("?!") == []
    assert len(concept_candidates(" ".join(f"w{i}" for i in range(2000)))) <= 900


def test_ask_settings():
    settings = RouterSettings()
    assert settings.ask.route is None and settings.ask.k == 5 and "{question}" in settings.ask.template
    routes = [{"name": "gen", "task": "generate", "fast": "provider:a", "slow": "provider:b"},
              {"name": "cls", "fast": "model:a", "slow": "model:b"}]
    assert RouterSettings(routes=routes, ask={"route": "gen"}).ask.route == "gen"
    with pytest.raises(ValidationError, match="generate route"):
        RouterSettings(routes=routes, ask={"route": "cls"})
    with pytest.raises(ValidationError, match="not one of"):
        RouterSettings(routes=routes, ask={"route": "missing"})
    with pytest.raises(ValidationError, match="question"):
        RouterSettings(ask={"template": "no placeholder"})
