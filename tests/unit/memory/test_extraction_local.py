"""The local extractor on the reported sentences and the patterns it documents, and `engram bench
extract` at a tiny size (the real pipeline, loaded once per test process)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from engram.memory.extraction.local import LocalExtractor
from engram.memory.extraction.model import load_pipeline
from engram_bench.extract import bench_extract, run_extract_bench


@pytest.fixture(scope="module")
def extractor() -> LocalExtractor:
    return LocalExtractor(load_pipeline())


def facts(extractor: LocalExtractor, text: str) -> set[tuple[str, str, str]]:
    return {(t.subject, t.relation, t.object) for t in extractor.extract(text).triples}


def test_the_reported_sentences(extractor) -> None:
    carol = extractor.extract("Carol works at Acme Corp in Lyon.")
    assert {(e.name, e.kind) for e in carol.entities} == {("Carol", "person"), ("Acme Corp", "organisation"), ("Lyon", "place")}
    assert facts(extractor, "Carol works at Acme Corp in Lyon.") == {("Carol", "works_at", "Acme Corp"), ("Acme Corp", "located_in", "Lyon")}
    assert facts(extractor, "Ada lives in Paris.") == {("Ada", "lives_in", "Paris")}
    assert facts(extractor, "Ada moved to Berlin.") == {("Ada", "lives_in", "Berlin")}


@pytest.mark.parametrize(("text", "expected"), [
    ("Nimbus was founded by Tom Baker.", {("Tom Baker", "founded", "Nimbus")}),  # the agent acts
    ("Liam is employed by the BBC.", {("Liam", "works_at", "BBC")}),  # the passive's subject stays
    ("Tom founded a startup called Nimbus.", {("Tom", "founded", "Nimbus"), ("Nimbus", "is_a", "startup")}),
    ("Ada lives in Paris and works at Google.", {("Ada", "lives_in", "Paris"), ("Ada", "works_at", "Google")}),
    ("Nadia decided to move to Rome.", {("Nadia", "lives_in", "Rome")}),
    ("Ada is Bob's sister.", {("Ada", "sister_of", "Bob")}),
    ("Tom is the CTO of Nimbus.", {("Tom", "works_at", "Nimbus"), ("Tom", "is_a", "cto")}),
    ("Bob is married to Alice.", {("Bob", "married_to", "Alice")}),
    ("Jim likes jazz and plays the guitar.", {("Jim", "likes", "jazz"), ("Jim", "plays", "guitar")}),
    ("Paula wrote the compiler in OCaml.", set()),  # written_in holds for a passive only
    ("Jonas lives in a small village near Bern.", set()),  # a place relation needs a named place
    ("David is my cousin.", set()),  # relative to a speaker engram does not name
])
def test_patterns(extractor, text, expected) -> None:
    assert facts(extractor, text) == expected


def test_pronouns_stand_for_the_last_person_named(extractor) -> None:
    text = "Marie Curie was born in Warsaw. She studied at the Sorbonne."
    assert facts(extractor, text) == {("Marie Curie", "born_in", "Warsaw"), ("Marie Curie", "studied_at", "Sorbonne")}
    plain = LocalExtractor(extractor.nlp, resolve_pronouns=False)
    assert facts(plain, text) == {("Marie Curie", "born_in", "Warsaw")}


def test_bench_extract_scores_a_few_items() -> None:
    report = run_extract_bench(limit=12)
    assert report.items == 12 and report.local.sentences == 12
    assert report.local.overall.tp + report.local.overall.fn == sum(
        len(t) for _, _, t in __import__("engram_bench.extract_set", fromlist=["LABELLED"]).LABELLED[:12])
    assert report.local.overall.f1 > report.baseline.overall.f1
    result = CliRunner().invoke(bench_extract, ["--limit", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["items"] == 5 and set(data["local"]["overall"]) >= {"precision", "recall", "f1"}
