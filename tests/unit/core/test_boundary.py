"""The checks every request's params pass before any part sees them (engram.server.boundary)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, JsonValue

from engram.errors import InvalidParams
from engram.server.boundary import INT_MAX, INT_MIN, check_integers, check_values, is_unicode


def test_is_unicode():
    assert is_unicode("") and is_unicode("plain") and is_unicode("é \U0001f600")
    assert not is_unicode("\ud800") and not is_unicode("a\udfffb")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"text": "a\ud800"}, "text"),
        ({"items": [{"text": "ok"}, {"text": "\udc00"}]}, "items.1.text"),
        ({"metadata": {"k\ud800": 1}}, "metadata.k\\ud800"),
        ({"metadata": {"list": [1, 2.5, None, ["x", "\ud800"]]}}, "metadata.list.3.1"),
        ({"first": "\ud800", "second": "\ud801"}, "first"),
    ],
)
def test_invalid_unicode_is_named_by_its_path(params, field):
    with pytest.raises(InvalidParams) as info:
        check_values(params)
    assert info.value.reason == "invalid_unicode" and info.value.data["field"] == field


INF = float("inf")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"echo": INF}, "echo"),
        ({"metadata": {"big": -INF}}, "metadata.big"),
        ({"items": [{"vector": [1, INF, 0]}]}, "items.0.vector"),  # a list of numbers is named whole
        ({"vector": [0.5, 0.25, INF]}, "vector"),
        ({"rows": [[1.0], ["x", INF]]}, "rows.1.1"),  # not only numbers: each item named
        ({"nested": [{"x": float("nan")}]}, "nested.0.x"),
    ],
)
def test_infinite_numbers_are_named_by_their_path(params, field):
    with pytest.raises(InvalidParams) as info:
        check_values(params)
    assert info.value.reason == "non_finite_number" and info.value.data["field"] == field


def test_valid_text_and_numbers_pass():
    check_values({"text": "é \U0001f600", "vector": [0.5] * 1000, "n": 2**70, "tags": ["a", "b"], "meta": {"k": None}})


class Inner(BaseModel):
    offset: int = 0
    free: JsonValue = None


class Model(BaseModel):
    start: int = 0
    size: int | None = None
    ids: list[int] = Field(default_factory=list)
    bounded: Annotated[int, Field(ge=0)] = 0
    inner: Inner | None = None
    wrapped: Annotated[Inner | None, Field(description="a model behind Annotated and a union")] = None
    items: list[Inner] = Field(default_factory=list)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    data: Any = None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": 2**63}, "start"),
        ({"start": INT_MIN - 1}, "start"),
        ({"size": 2**64}, "size"),
        ({"ids": [1, 2**63]}, "ids.1"),
        ({"bounded": 10**30}, "bounded"),
        ({"inner": {"offset": 2**63}}, "inner.offset"),
        ({"wrapped": {"offset": 2**63}}, "wrapped.offset"),
        ({"items": [{}, {"offset": 2**63}]}, "items.1.offset"),
    ],
)
def test_declared_integers_must_fit_64_bits(params, field):
    with pytest.raises(InvalidParams) as info:
        check_integers(Model.model_validate(params))
    assert info.value.reason == "integer_out_of_range" and info.value.data["field"] == field


def test_free_json_and_64_bit_integers_pass():
    check_integers(
        Model.model_validate(
            {
                "start": INT_MAX,
                "size": INT_MIN,
                "inner": {"free": [2**64]},
                "metadata": {"n": 2**64},
                "data": [[2**64 - 1]],
            }
        )
    )
