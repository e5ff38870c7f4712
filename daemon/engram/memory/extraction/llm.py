"""The LLM extractor: what a generate provider adds to the local extractor's facts.

Optional (``memory.extraction.llm_provider``), and only through the providers part, whose
policy check decides whether the text may go to that provider (the default policy keeps remote
ones out). For each episode the provider is asked, mem0/Graphiti style, for one JSON object
matching :class:`ExtractedFacts` (its JSON Schema is in the system prompt), with the facts the
local extractor found listed so that it adds rather than repeats. The answer is validated by
pydantic; relation types are normalised to snake_case; an answer that does not validate adds
nothing (and is counted), it never fails the batch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engram.memory.extraction.local import Entity, Extraction
from engram.memory.extraction.vocabulary import ENTITY_KINDS, VERB_PATTERNS

__all__ = ["ExtractedFacts", "ExtractionGenerator", "Generate", "LLMExtractor", "snake_case"]

ExtractionGenerator = Callable[[str, str, str, tuple[str, ...]], Awaitable[str]]
"""What memory needs of the providers for LLM extraction, declared here: (prompt, system prompt,
provider name, data tags) -> the provider's text. The composition root hands memory one over the
providers part, which runs the policy's egress check first."""

Generate = Callable[[str, str, tuple[str, ...]], Awaitable[str]]
"""(prompt, system prompt, the episode's tags: the policy's data tags) -> the provider's text;
raises what the providers part raises (no provider, the policy's refusal, ...)."""

_KINDS = sorted(set(ENTITY_KINDS.values()))
_TYPES = sorted(set(VERB_PATTERNS.values()) | {"is_a", "located_in", "sister_of", "friend_of"})
_RELATION = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class ExtractedEntity(_Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: str | None = Field(default=None, description=f"One of {', '.join(_KINDS)}, or null.")


class ExtractedRelation(_Strict):
    subject: str = Field(min_length=1, max_length=200)
    relation: str = Field(min_length=1, max_length=64, description="snake_case, e.g. works_at, lives_in, likes.")
    object: str = Field(min_length=1, max_length=200)


class ExtractedFacts(_Strict):
    entities: list[ExtractedEntity] = Field(default_factory=list, max_length=100)
    relations: list[ExtractedRelation] = Field(default_factory=list, max_length=100)


def snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.casefold()).strip("_")


SYSTEM = (
    "You extract knowledge from a short personal note for a knowledge graph. Answer with one JSON "
    "object and nothing else, matching this JSON Schema:\n{schema}\n"
    "Relations go from subject to object, with snake_case types; prefer these types: {types}. "
    "Name people, organisations and places as the text writes them; lower-case common nouns. "
    "Leave out facts already listed as found, and anything the text does not state."
)


class LLMExtractor:
    name = "llm"

    def __init__(self, generate: Generate, max_chars: int = 4000) -> None:
        self._generate = generate
        self.max_chars = max_chars
        self.system = SYSTEM.format(schema=json.dumps(ExtractedFacts.model_json_schema(), separators=(",", ":")),
                                    types=", ".join(_TYPES))
        self.invalid = 0  # answers that did not validate

    def prompt(self, text: str, found: Extraction) -> str:
        known = "\n".join(f"- {t.subject} | {t.relation} | {t.object}" for t in found.triples) or "- (none)"
        return f"Text:\n{text[: self.max_chars]}\n\nAlready found:\n{known}\n"

    def parse(self, answer: str) -> ExtractedFacts | None:
        """The JSON object in ``answer`` (a model may wrap it in prose or a code fence), validated."""
        start, end = answer.find("{"), answer.rfind("}")
        if start < 0 or end <= start:
            self.invalid += 1
            return None
        try:
            return ExtractedFacts.model_validate_json(answer[start : end + 1])
        except ValidationError:
            self.invalid += 1
            return None

    async def add_to(self, text: str, found: Extraction, tags: tuple[str, ...] = ()) -> int:
        """Ask the provider about ``text`` and add to ``found`` what it did not have; returns
        how many triples were added."""
        facts = self.parse(await self._generate(self.prompt(text, found), self.system, tags))
        if facts is None:
            return 0
        kinds = {e.name.casefold(): (e.kind if e.kind in _KINDS else None) for e in facts.entities}
        before = len(found.triples)
        for r in facts.relations:
            relation = snake_case(r.relation)
            if not _RELATION.match(relation):
                continue
            found.add(Entity(r.subject, kinds.get(r.subject.casefold())), relation, Entity(r.object, kinds.get(r.object.casefold())))
        for e in facts.entities:
            found.add_entity(Entity(e.name, kinds[e.name.casefold()]))
        return len(found.triples) - before
