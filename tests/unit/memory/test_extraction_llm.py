"""The LLM extractor's side of the exchange: the prompt, the schema, validation, snake_case, and
what it adds to the local facts (with a fake model: a function answering as one would)."""

from __future__ import annotations

import json

from engram.memory.extraction.llm import ExtractedFacts, LLMExtractor, snake_case
from engram.memory.extraction.local import Entity, Extraction


def found(*triples: tuple[str, str, str]) -> Extraction:
    out = Extraction()
    for s, r, o in triples:
        out.add(Entity(s, "person"), r, Entity(o, None))
    return out


async def test_it_adds_what_the_local_extractor_missed_in_snake_case() -> None:
    sent: list[tuple[str, str, tuple[str, ...]]] = []

    async def model(prompt: str, system: str, tags: tuple[str, ...]) -> str:
        sent.append((prompt, system, tags))
        return "Sure:\n```json\n" + json.dumps({"entities": [{"name": "Lyon", "kind": "place"}], "relations": [
            {"subject": "Carol", "relation": "works_at", "object": "Acme Corp"},
            {"subject": "Carol", "relation": "Based In", "object": "Lyon"},
            {"subject": "Carol", "relation": "!!!", "object": "Lyon"},
        ]}) + "\n```"

    extraction = found(("Carol", "works_at", "Acme Corp"))
    added = await LLMExtractor(model).add_to("Carol works at Acme Corp in Lyon.", extraction, ("work",))
    assert added == 1
    assert [(t.subject, t.relation, t.object) for t in extraction.triples] == [
        ("Carol", "works_at", "Acme Corp"), ("Carol", "based_in", "Lyon")]
    assert ("Lyon", "place") in {(e.name, e.kind) for e in extraction.entities}
    prompt, system, tags = sent[0]
    assert "Text:\nCarol works at Acme Corp in Lyon." in prompt and "- Carol | works_at | Acme Corp" in prompt
    assert json.dumps(ExtractedFacts.model_json_schema(), separators=(",", ":")) in system and tags == ("work",)


async def test_an_answer_that_does_not_validate_adds_nothing() -> None:
    answers = iter(["I cannot do that.", '{"relations": [{"subject": "Ada"}]}', '{"relations": "many"}'])

    async def model(prompt: str, system: str, tags: tuple[str, ...]) -> str:
        return next(answers)

    llm = LLMExtractor(model)
    extraction = found(("Ada", "lives_in", "Paris"))
    for _ in range(3):
        assert await llm.add_to("Ada lives in Paris.", extraction) == 0
    assert llm.invalid == 3 and len(extraction.triples) == 1


def test_snake_case() -> None:
    assert snake_case("Favourite Colour") == "favourite_colour"
    assert snake_case("works-at") == "works_at" and snake_case("  LIVES IN ") == "lives_in"
