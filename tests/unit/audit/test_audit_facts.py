"""One fact, one entry: an event that repeats what an entry already says is left out of the log."""

from __future__ import annotations

from engram.audit.entry import event_record, is_audited
from engram.memory.events import MemoryForgotten, MemoryRemembered


def forgotten(scope: str) -> MemoryForgotten:
    return MemoryForgotten(namespace="uid:1", ids=["e1"], text_hmac=["00"], scope=scope)  # type: ignore[arg-type]


def test_sleep_deletions_are_recorded_by_sleep_forget_only() -> None:
    assert not is_audited(forgotten("sleep"))  # sleep made its sleep.forget entry before deleting
    assert all(is_audited(forgotten(scope)) for scope in ("ids", "filter", "all"))


def test_the_decision_is_not_part_of_what_subscribers_or_the_log_see() -> None:
    event = forgotten("ids")
    assert "audit" not in event.model_dump() and "audit" not in event_record(event).detail


def test_what_a_request_caused_is_recorded_beside_the_request() -> None:
    remembered = MemoryRemembered(namespace="uid:1", ids=["e1"], text_hmac=["00"], origin="remember", task_id=7)
    assert is_audited(remembered)  # its ids and digests are in the clear only here; the rpc entry has hashes
