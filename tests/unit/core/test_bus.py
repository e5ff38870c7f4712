"""The event bus on its own: declared types, patterns, priorities, overflow policies."""

from __future__ import annotations

import anyio
import pytest

from engram.bus import Event, EventBus, OverflowPolicy, Priority, SubscriptionClosed, UnknownEventType
from engram.bus.events import CORE_EVENTS, DaemonStopping, RequestCompleted


class Ping(Event):
    topic = "test.ping"
    n: int


class Alarm(Event):
    topic = "test.alarm"
    priority = Priority.CONTROL


class Undeclared(Event):
    topic = "test.undeclared"


def bus() -> EventBus:
    return EventBus((*CORE_EVENTS, Ping, Alarm), default_queue=3)


async def test_undeclared_event_type_is_refused():
    with pytest.raises(UnknownEventType):
        bus().publish(Undeclared())


async def test_duplicate_topic_declaration_is_refused():
    class Impostor(Event):
        topic = "test.ping"

    with pytest.raises(UnknownEventType):
        bus().declare(Impostor)


async def test_wildcards_match_topics():
    b = bus()
    sub = b.subscribe(["test.*"])
    other = b.subscribe(["request.completed"])
    b.publish(Ping(n=1))
    b.publish(RequestCompleted(connection=1, request=1, method="m", outcome="ok", duration_ms=1.0))
    assert (await sub.receive()).n == 1
    assert sub.receive_nowait() is None
    assert (await other.receive()).method == "m"
    assert b.topics_matching("test.*") == ["test.alarm", "test.ping"]


async def test_control_events_overtake_bulk_events():
    b = bus()
    sub = b.subscribe(["*"])
    b.publish(Ping(n=1))
    b.publish(Ping(n=2))
    b.publish(Alarm())
    assert isinstance(await sub.receive(), Alarm)
    assert [(await sub.receive()).n, (await sub.receive()).n] == [1, 2]


async def test_drop_oldest_keeps_the_newest_and_counts():
    b = bus()
    sub = b.subscribe(["test.ping"], maxsize=3)
    for n in range(10):
        b.publish(Ping(n=n))
    assert sub.dropped == 7
    assert [sub.receive_nowait().n for _ in range(3)] == [7, 8, 9]


async def test_drop_newest_keeps_what_is_queued():
    b = bus()
    sub = b.subscribe(["test.ping"], maxsize=2, overflow=OverflowPolicy.DROP_NEWEST)
    for n in range(5):
        b.publish(Ping(n=n))
    assert sub.dropped == 3 and [sub.receive_nowait().n for _ in range(2)] == [0, 1]


async def test_disconnect_policy_ends_the_subscription():
    b = bus()
    sub = b.subscribe(["test.ping"], maxsize=1, overflow=OverflowPolicy.DISCONNECT)
    b.publish(Ping(n=0))
    b.publish(Ping(n=1))
    assert sub.closed_reason == "overflow" and sub not in b.subscriptions
    assert (await sub.receive()).n == 0
    with pytest.raises(SubscriptionClosed):
        await sub.receive()


async def test_lagging_is_announced_once_per_episode():
    b = bus()
    slow = b.subscribe(["test.ping"], maxsize=1)
    watcher = b.subscribe(["bus.*"])
    for n in range(5):
        b.publish(Ping(n=n))
    lag = await watcher.receive()
    assert lag.topic == "bus.subscriber_lagging" and lag.subscription == slow.id and lag.dropped == 1
    assert watcher.receive_nowait() is None
    slow.receive_nowait()
    slow.receive_nowait()  # caught up
    b.publish(Ping(n=6))
    b.publish(Ping(n=7))
    assert (await watcher.receive()).dropped == 5


async def test_publish_never_waits_for_consumers():
    b = bus()
    b.subscribe(["*"], maxsize=1)
    with anyio.fail_after(1):
        for n in range(10_000):
            b.publish(Ping(n=n))
    assert b.published >= 10_000


async def test_receive_waits_for_an_event():
    b = bus()
    sub = b.subscribe(["daemon.*"])
    async with anyio.create_task_group() as tg:
        async def later():
            await anyio.sleep(0.05)
            b.publish(DaemonStopping(reason="test"))

        tg.start_soon(later)
        with anyio.fail_after(5):
            assert (await sub.receive()).reason == "test"


async def test_event_wire_form():
    wire = Ping(n=3, time=12.5).wire()
    assert wire == {"topic": "test.ping", "time": 12.5, "data": {"n": 3}}


async def test_topic_routes_follow_subscribe_and_unsubscribe():
    b = bus()
    assert not b.wants("test.ping")  # nobody listens: publishers build no event
    b.publish(Ping(n=0))  # resolves (and remembers) the empty route
    sub = b.subscribe(["test.*"])
    assert b.wants("test.ping") and not b.wants("request.completed")
    b.publish(Ping(n=1))
    assert sub.receive_nowait().n == 1  # type: ignore[union-attr]
    b.unsubscribe(sub)
    assert not b.wants("test.ping")
    b.publish(Ping(n=2))
    assert sub.receive_nowait() is None


async def test_wants_like_asks_the_admission_filters():
    b = bus()
    b.subscribe(["test.ping"], admits=lambda event: event.n > 0)  # type: ignore[attr-defined]
    assert b.wants("test.ping")
    assert not b.wants("test.ping", like=Ping(n=0)) and b.wants("test.ping", like=Ping(n=1))
    b.subscribe(["test.*"])  # a subscriber without a filter takes anything
    assert b.wants("test.ping", like=Ping(n=0))
