"""Hypothesis strategies for the values a JSON Schema allows, for the schemas of ``schemas/``.

pydantic writes its params schemas with a small set of keywords (declared as draft 2020-12, but
all of them draft 7 too): ``type``, ``anyOf``, ``enum``, ``const``, ``$ref`` into ``$defs``,
``properties``/``required``/``additionalProperties``, ``items`` with ``minItems``/``maxItems``,
string lengths and ``pattern``, and number bounds. :func:`from_schema` turns each into the
matching hypothesis strategy once, so that drawing an example costs no schema work.

A keyword outside that set is an error, not ignored: a schema that starts to say something new
(or says something no validator reads, such as pydantic's ``ge`` where ``minimum`` was meant)
must be taught here before the fuzz test can claim to draw what the schema allows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

# Words for people and tools that constrain nothing.
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$schema"})
CONSTRAINTS = frozenset(
    {
        "type",
        "anyOf",
        "enum",
        "const",
        "$ref",
        "$defs",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)

# Arrays and free objects with no declared bound stay short: each element costs a draw, and the
# long and large values are the mutations' business (tests/e2e/fuzz_params.py).
UNBOUNDED_ITEMS = 4

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=UNBOUNDED_ITEMS) | st.dictionaries(st.text(), inner, max_size=UNBOUNDED_ITEMS),
    max_leaves=12,
)


class UnsupportedSchema(ValueError):
    """The schema uses a keyword (or a value of one) this module does not turn into a strategy."""


def from_schema(schema: dict[str, Any] | bool, known_strings: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    """Every JSON value ``schema`` allows (text is always valid Unicode; numbers are finite).

    ``known_strings`` (names and ids that exist where the values are sent) are drawn as well
    as random text wherever the schema allows them: random ids are all unknown, and a method
    given only unknown ones never gets past its first lookup."""
    definitions = schema.get("$defs", {}) if isinstance(schema, dict) else {}
    return _Builder(definitions, tuple(known_strings)).build(schema)


class _Builder:
    def __init__(self, definitions: dict[str, Any], known_strings: tuple[str, ...]) -> None:
        self._definitions = definitions
        self._known_strings = known_strings

    def build(self, schema: dict[str, Any] | bool) -> st.SearchStrategy[Any]:
        if schema is True or schema == {}:
            return ANY_JSON
        if schema is False:
            return st.nothing()
        unknown = set(schema) - ANNOTATIONS - CONSTRAINTS
        if unknown:
            raise UnsupportedSchema(f"keywords {sorted(unknown)} in {schema}")
        if "$ref" in schema:
            return self._reference(schema)
        if "anyOf" in schema:
            return st.one_of([self.build(branch) for branch in schema["anyOf"]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self.build({**schema, "type": one}) for one in kind])
        builder = {
            None: lambda s: ANY_JSON,
            "null": lambda s: st.none(),
            "boolean": lambda s: st.booleans(),
            "integer": self._integers,
            "number": self._number,
            "string": self._string,
            "array": self._array,
            "object": self._object,
        }.get(kind)
        if builder is None:
            raise UnsupportedSchema(f"type {kind!r} in {schema}")
        return builder(schema)

    def _integers(self, schema: dict[str, Any]) -> st.SearchStrategy[int]:
        integers = self._integer(schema)
        if integers is None:
            raise UnsupportedSchema(f"no integer within the bounds of {schema}")
        return integers

    def _reference(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        prefix = "#/$defs/"
        ref = schema["$ref"]
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self._definitions:
            raise UnsupportedSchema(f"$ref {ref!r}")
        if set(schema) - ANNOTATIONS - {"$ref"}:
            raise UnsupportedSchema(f"$ref with constraints beside it: {schema}")
        # deferred: a definition may refer to itself (recursive models).
        return st.deferred(lambda: self.build(self._definitions[ref[len(prefix) :]]))

    @staticmethod
    def _integer(schema: dict[str, Any]) -> st.SearchStrategy[int] | None:
        """The integers within the bounds (None when there are none)."""
        low = schema.get("minimum")
        high = schema.get("maximum")
        if "exclusiveMinimum" in schema:
            low = math.floor(schema["exclusiveMinimum"]) + 1
        if "exclusiveMaximum" in schema:
            high = math.ceil(schema["exclusiveMaximum"]) - 1
        if low is not None and high is not None and low > high:
            return None
        return st.integers(min_value=low, max_value=high)

    @classmethod
    def _number(cls, schema: dict[str, Any]) -> st.SearchStrategy[float | int]:
        floats = st.floats(
            min_value=schema.get("exclusiveMinimum", schema.get("minimum")),
            max_value=schema.get("exclusiveMaximum", schema.get("maximum")),
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
        # A JSON number without a fraction arrives as an integer (1, not 1.0): both must be
        # accepted where a number is, and integers beyond any float's range are numbers too.
        integer_bounds = {key: schema[key] for key in ("exclusiveMinimum", "exclusiveMaximum") if key in schema}
        if "minimum" in schema:
            integer_bounds["minimum"] = math.ceil(schema["minimum"])
        if "maximum" in schema:
            integer_bounds["maximum"] = math.floor(schema["maximum"])
        integers = cls._integer(integer_bounds)
        return floats | integers if integers is not None else floats

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        low, high = schema.get("minLength", 0), schema.get("maxLength")

        def fits(text: str) -> bool:
            return low <= len(text) <= (high if high is not None else len(text))

        pattern = schema.get("pattern")
        if pattern is None:
            drawn = st.text(min_size=low, max_size=high)
        elif low == 0 and high is None:
            drawn = st.from_regex(pattern, fullmatch=True)
        else:
            drawn = st.from_regex(pattern, fullmatch=True).filter(fits)
        known = [text for text in self._known_strings if fits(text) and (pattern is None or re.search(pattern, text))]
        return drawn | st.sampled_from(known) if known else drawn

    def _array(self, schema: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", max(low, UNBOUNDED_ITEMS))
        return st.lists(self.build(schema.get("items", True)), min_size=low, max_size=high)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        declared = st.fixed_dictionaries(
            {name: self.build(sub) for name, sub in properties.items() if name in required},
            optional={name: self.build(sub) for name, sub in properties.items() if name not in required},
        )
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return declared
        others = st.dictionaries(
            st.text(max_size=12).filter(lambda key: key not in properties), self.build(extra), max_size=UNBOUNDED_ITEMS
        )
        return st.tuples(others, declared).map(lambda parts: {**parts[0], **parts[1]})
