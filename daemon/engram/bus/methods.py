"""``events.subscribe`` / ``events.unsubscribe``: the bus, followed over the socket.

Each subscription belongs to the connection that made it and ends with it. A subscriber who is
not the owner gets only the events about itself (see :mod:`engram.bus.audience`). Events are
pushed as ``events.event`` notifications; ``dropped`` in each says how many this subscription has lost to
its overflow policy so far, so a client can tell a quiet period from a gap.
"""

from __future__ import annotations

from pydantic import Field

from engram.bus.audience import Audience, event_filter
from engram.bus.bus import EventBus, OverflowPolicy, Subscription
from engram.errors import InvalidParams, NotFound
from engram.server.methods import Connection, Params, RequestContext, Result, rpc

EVENT_NOTIFICATION = "events.event"
CLOSED_NOTIFICATION = "events.closed"


class SubscribeParams(Params):
    topics: list[str] = Field(
        default=["*"], min_length=1, max_length=32, description="Topic patterns ('*' matches any characters)."
    )
    queue: int | None = Field(
        default=None, ge=1, le=100_000, description="Events buffered for this subscription (default bus.subscriber_queue)."
    )
    overflow: OverflowPolicy = Field(
        default=OverflowPolicy.DROP_OLDEST, description="What happens when the buffer is full."
    )


class SubscribeResult(Result):
    subscription: str
    topics: list[str] = Field(description="The declared topics the patterns match now.")


class TopicsParams(Params):
    pattern: str = Field(default="*", description="Only topics matching this pattern.")


class TopicsResult(Result):
    topics: list[str]


class UnsubscribeParams(Params):
    subscription: str


class UnsubscribeResult(Result):
    subscription: str
    delivered: int
    dropped: int


class EventMethods:
    def __init__(self, bus: EventBus, audience: Audience) -> None:
        self._bus = bus
        self._audience = audience
        self._owners: dict[str, tuple[Subscription, int]] = {}  # id -> (subscription, connection id)

    @rpc("events.topics", summary="The event topics declared on the bus.", audit=False, instant=True)
    async def topics(self, ctx: RequestContext, params: TopicsParams) -> TopicsResult:
        return TopicsResult(topics=self._bus.topics_matching(params.pattern))

    @rpc(
        "events.subscribe",
        summary="Follow bus events matching topic patterns, pushed as notifications "
        "(only the owner sees every client's; others see the events about themselves).",
    )
    async def subscribe(self, ctx: RequestContext, params: SubscribeParams) -> SubscribeResult:
        matched: set[str] = set()
        for index, pattern in enumerate(params.topics):
            topics = self._bus.topics_matching(pattern)
            if not topics:
                raise InvalidParams(
                    f"topics.{index}: pattern {pattern!r} matches no event topic",
                    reason="unknown_topic",
                    field=f"topics.{index}",
                    known_topics=self._bus.topics,
                )
            matched.update(topics)
        admits = event_filter(ctx.principal, self._audience)
        sub = self._bus.subscribe(params.topics, params.queue, params.overflow, admits)
        conn = ctx.connection
        self._owners[sub.id] = (sub, conn.id)
        conn.subscriptions += 1

        def release() -> None:
            if self._owners.pop(sub.id, None) is not None:
                conn.subscriptions -= 1
            self._bus.unsubscribe(sub, "connection closed")

        conn.on_close(release)
        conn.on_drain(lambda: sub.depth)
        conn.start_soon(lambda: self._pump(sub, conn), name=f"events-{sub.id}")
        return SubscribeResult(subscription=sub.id, topics=sorted(matched))

    async def _pump(self, sub: Subscription, conn: Connection) -> None:
        async for event in sub:
            await conn.notify(EVENT_NOTIFICATION, {"subscription": sub.id, "dropped": sub.dropped, **event.wire()})
        if sub.closed_reason == "overflow":
            await conn.notify(CLOSED_NOTIFICATION, {"subscription": sub.id, "reason": "overflow", "dropped": sub.dropped})
        if self._owners.pop(sub.id, None) is not None:
            conn.subscriptions -= 1

    @rpc("events.unsubscribe", summary="End one of this connection's event subscriptions.")
    async def unsubscribe(self, ctx: RequestContext, params: UnsubscribeParams) -> UnsubscribeResult:
        sub, owner = self._owners.get(params.subscription, (None, None))
        if sub is None or owner != ctx.connection.id:
            raise NotFound(f"no subscription {params.subscription!r} on this connection", subscription=params.subscription)
        self._bus.unsubscribe(sub)
        return UnsubscribeResult(subscription=sub.id, delivered=sub.delivered, dropped=sub.dropped)
