"""The event bus.

Publishing never waits: every subscriber has its own bounded queue and a declared overflow
policy, so a slow consumer (a client following events over a slow link, say) costs itself events,
never the daemon latency. Each queue has one lane per priority and the consumer drains control
events first.

The lanes are plain deques rather than anyio memory object streams because the overflow policies
need what streams do not offer: dropping the *oldest* buffered item and looking at two lanes
without a task per lane. All access happens on the event loop thread, so no lock is needed;
code in worker threads publishes through ``anyio.from_thread.run_sync(bus.publish, event)``.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum

import anyio
import structlog

from engram.bus.events import Event, Priority, SubscriberLagging
from engram.errors import EngramError

log = structlog.get_logger("engram.bus")


class UnknownEventType(EngramError):
    """An event class was published that no part declared: a programming error."""


class SubscriptionClosed(EngramError):
    """The subscription ended (unsubscribed, or disconnected by its overflow policy)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"subscription closed: {reason}")
        self.reason = reason


class OverflowPolicy(StrEnum):
    DROP_OLDEST = "drop_oldest"  # keep the newest events; count what was lost
    DROP_NEWEST = "drop_newest"  # keep what is queued; count what was refused
    DISCONNECT = "disconnect"  # end the subscription: for consumers that must not miss events


class Subscription:
    def __init__(
        self,
        sub_id: str,
        patterns: tuple[str, ...],
        maxsize: int,
        overflow: OverflowPolicy,
        admits: Callable[[Event], bool] | None = None,
    ) -> None:
        self.id = sub_id
        self.patterns = patterns
        # Which of the matching events this subscriber may see (None: all of them). Decided as
        # they are published, so what it may not see never takes room in its queue.
        self.admits = admits
        self.maxsize = maxsize
        self.overflow = overflow
        self.delivered = 0
        self.dropped = 0
        self.closed_reason: str | None = None
        self._lanes: dict[Priority, deque[Event]] = {p: deque() for p in sorted(Priority)}
        self._wakeup = anyio.Event()
        self._lagging = False

    def matches(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.patterns)

    @property
    def depth(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def offer(self, event: Event) -> bool:
        """Queue ``event``; returns False when it overflowed (and the policy was applied)."""
        if self.closed_reason is not None:
            return True
        lane = self._lanes[event.priority]
        overflowed = len(lane) >= self.maxsize
        if overflowed:
            self.dropped += 1
            if self.overflow is OverflowPolicy.DROP_OLDEST:
                lane.popleft()
                lane.append(event)
            elif self.overflow is OverflowPolicy.DISCONNECT:
                self.close("overflow")
        else:
            lane.append(event)
        self._wakeup.set()
        return not overflowed

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._wakeup.set()

    def receive_nowait(self) -> Event | None:
        for lane in self._lanes.values():
            if lane:
                self.delivered += 1
                return lane.popleft()
        self._lagging = False  # caught up: the next overflow is news again
        return None

    async def receive(self) -> Event:
        while True:
            event = self.receive_nowait()
            if event is not None:
                return event
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except SubscriptionClosed:
            raise StopAsyncIteration from None


class EventBus:
    def __init__(self, declared: Iterable[type[Event]] = (), default_queue: int = 1024) -> None:
        self._types: dict[str, type[Event]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        # topic -> the subscriptions whose patterns match it, resolved on the first publish of
        # the topic: matching every pattern of every subscriber on every publish was a tenth of
        # a ping's cost. Emptied whenever the set of subscriptions changes.
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._ids = itertools.count(1)
        self.default_queue = default_queue
        self.published = 0
        self.declare(*declared)

    def declare(self, *event_types: type[Event]) -> None:
        for event_type in event_types:
            existing = self._types.get(event_type.topic)
            if existing is not None and existing is not event_type:
                raise UnknownEventType(
                    f"topic {event_type.topic!r} declared twice ({existing.__name__}, {event_type.__name__})"
                )
            self._types[event_type.topic] = event_type

    @property
    def event_types(self) -> list[type[Event]]:
        return [self._types[topic] for topic in sorted(self._types)]

    @property
    def topics(self) -> list[str]:
        return sorted(self._types)

    def topics_matching(self, pattern: str) -> list[str]:
        return [topic for topic in self.topics if fnmatch.fnmatchcase(topic, pattern)]

    def subscribe(
        self,
        patterns: Iterable[str],
        maxsize: int | None = None,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
        admits: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        sub = Subscription(f"s{next(self._ids)}", tuple(patterns), maxsize or self.default_queue, overflow, admits)
        self._subscriptions[sub.id] = sub
        self._routes.clear()
        return sub

    def unsubscribe(self, sub: Subscription, reason: str = "unsubscribed") -> None:
        sub.close(reason)
        self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if self._subscriptions.pop(sub.id, None) is not None:
            self._routes.clear()

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        route = self._routes.get(topic)
        if route is None:
            route = self._routes[topic] = tuple(sub for sub in self._subscriptions.values() if sub.matches(topic))
        return route

    def wants(self, topic: str, like: Event | None = None) -> bool:
        """Whether any subscription's patterns match ``topic``: a publisher on the hot path asks
        first and builds no event that nobody would receive. With ``like`` (an event of that
        topic the publisher already holds, differing from the next one only in its time), only
        the subscriptions that would admit it count."""
        route = self._route(topic)
        if like is None or not route:
            return bool(route)
        return any(sub.admits is None or sub.admits(like) for sub in route)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    def publish(self, event: Event) -> None:
        declared = self._types.get(getattr(type(event), "topic", ""))
        if declared is not type(event):
            raise UnknownEventType(f"event type {type(event).__name__} was not declared on the bus")
        self.published += 1
        lagging: list[Subscription] = []
        for sub in self._route(event.topic):  # a tuple: forgetting a closed one below is safe
            if sub.admits is not None and not sub.admits(event):
                continue
            if not sub.offer(event) and not sub._lagging:
                sub._lagging = True
                lagging.append(sub)
            if sub.closed_reason is not None:
                self._forget(sub)
        for sub in lagging:
            log.warning("subscriber lagging", subscription=sub.id, dropped=sub.dropped, policy=sub.overflow.value)
            self.publish(SubscriberLagging(subscription=sub.id, dropped=sub.dropped, policy=sub.overflow.value))
