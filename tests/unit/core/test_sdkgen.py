"""The SDK generator on small method tables of its own: names, collisions, defaults, refusals.
(test_contract.py checks the checked-in SDK against the real method table.)"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from engram.client.sdk_models import EpisodeIn
from engram.client.sdk_runtime import OMIT, _params
from engram.sdkgen import _Generator


def method(name: str, params: dict[str, Any], result: dict[str, Any], description: str = "Does it.") -> dict[str, Any]:
    return {"title": name, "description": description, "owner_only": False, "params": params, "result": result}


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], **extra}


ITEM_A = obj({"a": {"type": "string"}}, ["a"])
ITEM_B = obj({"b": {"type": "integer"}}, ["b"])


def render(*methods: dict[str, Any]) -> tuple[str, str]:
    generator = _Generator(list(methods))
    generator.collect()
    return generator.render_models(), generator.render_namespaces()


def run(source: str, name: str) -> dict[str, Any]:
    """Import generated source as a module (pydantic resolves the annotations in its namespace)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - our own generated code
    finally:
        del sys.modules[name]
    return module.__dict__


def test_one_class_per_distinct_def_and_prefixed_names_where_two_methods_disagree() -> None:
    same = {"$defs": {"Item": ITEM_A}, **obj({"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}}, ["items"])}
    other = {"$defs": {"Item": ITEM_B}, **obj({"item": {"$ref": "#/$defs/Item"}}, ["item"])}
    models, _ = render(method("a.one", obj({}), same), method("a.two", obj({}), same), method("b.three", obj({}), other))
    assert models.count("class AOneItem(Answer)") == 1 and "class BThreeItem(Answer)" in models
    assert "items: list[AOneItem]" in models and "item: BThreeItem" in models
    built = run(models, "sdkgen_test_models")
    assert built["AOneResult"].model_validate({"items": [{"a": "x"}]}).items[0].a == "x"


def test_params_become_keyword_arguments_sent_only_when_given() -> None:
    params = obj(
        {
            "query": {"type": "string", "description": "What to find."},
            "k": {"type": "integer", "default": 10, "description": "How many."},
            "mode": {"enum": ["fast", "slow"], "default": "fast"},
        },
        ["query"],
    )
    _, namespaces = render(method("memory.find", params, obj({"n": {"type": "integer"}}, ["n"])))
    assert "async def find(self, *, query: str, k: int = OMIT, mode: Literal['fast', 'slow'] = OMIT, timeout: float | None = None)" in namespaces
    assert "query: What to find (required)." in namespaces and "k: How many (default 10)." in namespaces

    memory = run(namespaces, "sdkgen_test_namespaces")["Memory"](object())  # a client it never reaches
    with pytest.raises(TypeError, match="kk"):
        memory.find(query="x", kk=1)
    with pytest.raises(TypeError, match="query"):
        memory.find(k=1)


def test_what_is_sent_is_what_was_given_as_json() -> None:
    episode = EpisodeIn(text="hello", tags=["a"])
    assert _params({"items": [episode, {"text": "raw"}], "namespace": OMIT, "k": 0}) == {
        "items": [{"text": "hello", "tags": ["a"]}, {"text": "raw"}],
        "k": 0,
    }


def test_the_generator_refuses_what_it_cannot_name_or_type() -> None:
    with pytest.raises(ValueError, match="oneOf"):
        render(method("a.b", obj({"x": {"oneOf": [{"type": "string"}]}}), obj({})))
    with pytest.raises(ValueError, match="clash with the SDK's call options"):
        render(method("a.b", obj({"timeout": {"type": "number"}}), obj({})))[1]
    with pytest.raises(ValueError, match="both a method and a namespace"):
        render(method("a.b", obj({}), obj({})), method("a.b.c", obj({}), obj({})))
