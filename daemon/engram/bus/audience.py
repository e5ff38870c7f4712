"""Who may follow which events: a subscriber who is not the owner sees only what is about them.

Events tell what every client does (methods, pids, namespaces, episode ids), so following all of
them is the owner's privilege. Anyone else granted ``events.subscribe`` sees:

* events caused by their own uid (their requests, connections, policy decisions, writes);
* events about memory namespaces they may read (``memory.recall`` on each, as the policy says);
* the daemon starting and stopping (``Event.public``).

The policy decides, through the two questions of :class:`Audience`; this module only applies
them to an event's subject (:meth:`engram.bus.events.Event.subject_uid` and
:meth:`~engram.bus.events.Event.subject_namespaces`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engram.bus.events import Event
from engram.principal import Principal

__all__ = ["Audience", "event_filter"]


class Audience(Protocol):
    def sees_all_events(self, principal: Principal) -> bool:
        """Whether ``principal`` may follow every event (the owner and root)."""
        ...

    def may_read_namespace(self, principal: Principal, namespace: str) -> bool:
        """Whether ``principal`` may read ``namespace``; asked per event, so it must be cheap and
        record nothing."""
        ...


def event_filter(principal: Principal, audience: Audience) -> Callable[[Event], bool] | None:
    """The events a subscription of ``principal`` admits; None when it admits every one."""
    if audience.sees_all_events(principal):
        return None

    def admits(event: Event) -> bool:
        if event.public or event.subject_uid() == principal.uid:
            return True
        namespaces = event.subject_namespaces()
        return bool(namespaces) and all(audience.may_read_namespace(principal, ns) for ns in namespaces)

    return admits
