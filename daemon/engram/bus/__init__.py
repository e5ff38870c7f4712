"""The internal event bus: typed events, topic patterns, bounded per-subscriber queues."""

from engram.bus.bus import EventBus, OverflowPolicy, Subscription, SubscriptionClosed, UnknownEventType
from engram.bus.events import Event, Priority

__all__ = [
    "Event",
    "EventBus",
    "OverflowPolicy",
    "Priority",
    "Subscription",
    "SubscriptionClosed",
    "UnknownEventType",
]
