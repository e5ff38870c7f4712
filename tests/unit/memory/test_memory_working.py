"""Working memory: bounded sessions, composite eviction, expiry (a fake clock drives time)."""

from __future__ import annotations

import pytest
from engram.memory.settings import WorkingSettings, WorkingWeights
from engram.memory.working import WorkingMemory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **overrides) -> WorkingMemory:
    return WorkingMemory(WorkingSettings(**overrides), clock=clock)


def test_put_get_list_clear(clock: Clock) -> None:
    wm = make(clock)
    key, evicted = wm.put("ns", "s1", "buy milk", importance=0.3)
    assert evicted == []
    item = wm.get("ns", "s1", key)
    assert item is not None and item.content == "buy milk" and item.access_count == 1
    assert wm.get("other-ns", "s1", key) is None  # namespaces never see each other's sessions
    same, _ = wm.put("ns", "s1", "buy oat milk", key=key, importance=0.9)
    assert same == key and wm.get("ns", "s1", key).content == "buy oat milk"
    assert [i.key for _, i in wm.ranked("ns", "s1")] == [key]
    assert [i.key for i in wm.clear("ns", "s1")] == [key]
    assert wm.ranked("ns", "s1") == [] and wm.stats() == (0, 0) and wm.bytes == 0


def test_capacity_evicts_the_lowest_composite_score(clock: Clock) -> None:
    wm = make(clock, max_items=3, weights=WorkingWeights(recency=1, importance=1, frequency=1))
    wm.put("ns", "s", "old but important", key="a", importance=1.0)
    clock.now += 60
    wm.put("ns", "s", "recent, unimportant", key="b", importance=0.0)
    clock.now += 60
    wm.put("ns", "s", "often used", key="c", importance=0.2)
    for _ in range(5):
        wm.get("ns", "s", "c")
    clock.now += 1
    _, evicted = wm.put("ns", "s", "newest", key="d", importance=0.1)
    assert [e.item.key for e in evicted] == ["b"] and evicted[0].reason == "capacity"
    assert sorted(wm.scores("ns", "s")) == ["a", "c", "d"]


def test_the_item_being_put_is_never_its_own_victim(clock: Clock) -> None:
    wm = make(clock, max_items=1)
    wm.put("ns", "s", "important", key="a", importance=1.0)
    _, evicted = wm.put("ns", "s", "trivial", key="b", importance=0.0)
    assert [e.item.key for e in evicted] == ["a"]


def test_attention_scales_importance(clock: Clock) -> None:
    wm = make(clock, max_items=2, weights=WorkingWeights(recency=0, importance=1, frequency=0))
    wm.put("ns", "s", "x", key="focused", importance=0.5, attention=1.0)
    wm.put("ns", "s", "y", key="ignored", importance=0.9, attention=0.1)
    _, evicted = wm.put("ns", "s", "z", key="new", importance=0.6)
    assert [e.item.key for e in evicted] == ["ignored"]


def test_session_capacity_evicts_least_recently_used_session(clock: Clock) -> None:
    wm = make(clock, max_sessions=2)
    wm.put("ns", "s1", "one")
    clock.now += 1
    wm.put("ns", "s2", "two")
    clock.now += 1
    wm.get("ns", "s1", "w1")  # s1 is now the most recently used
    clock.now += 1
    _, evicted = wm.put("ns", "s3", "three")
    assert [(e.session, e.reason) for e in evicted] == [("s2", "session_capacity")]
    assert wm.stats() == (2, 2)


def test_byte_budget_evicts_from_least_recently_used_sessions(clock: Clock) -> None:
    wm = make(clock, max_bytes=1024)
    wm.put("ns", "old", "a" * 600, key="big")
    clock.now += 1
    _, evicted = wm.put("ns", "new", "b" * 600, key="fresh")
    assert [(e.session, e.item.key, e.reason) for e in evicted] == [("old", "big", "bytes")]
    assert wm.bytes == 600


def test_idle_sessions_expire(clock: Clock) -> None:
    wm = make(clock, session_ttl=100)
    wm.put("ns", "idle", "x")
    clock.now += 50
    wm.put("ns", "busy", "y")
    clock.now += 60
    evicted = wm.expire()
    assert [(e.session, e.reason) for e in evicted] == [("idle", "expired")]
    assert wm.stats() == (1, 1)


def test_drop_namespace(clock: Clock) -> None:
    wm = make(clock)
    wm.put("a", "s", "x")
    wm.put("a", "t", "y")
    wm.put("b", "s", "z")
    assert wm.drop_namespace("a") == 2
    assert wm.stats("a") == (0, 0) and wm.stats("b") == (1, 1)
