"""Working memory: per-session bounded buffers in RAM, evicted by a composite score.

An item's score is the weighted mean (``memory.working.weights``) of

- recency: ``0.5 ** (idle seconds / memory.working.recency_half_life)``, idle since its last access;
- importance x attention: what the client said it matters, scaled by how much it is in focus;
- frequency: ``log1p(accesses) / log1p(most accesses in the session)``.

A put beyond ``max_items`` evicts the session's lowest-scored item (never the one being put); a
new session beyond ``max_sessions`` evicts the least recently used session whole; content beyond
``max_bytes`` evicts the lowest-scored items of the least recently used sessions; sessions idle
for ``session_ttl`` expire. Every eviction is returned to the caller, which remembers the items
important enough (``promote_threshold``) as episodes. Nothing here is durable: working memory is
lost with the process, by design.

Pure and synchronous (the clock is injected), so tests drive it directly; all calls happen on the
event loop thread.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from engram.memory.settings import WorkingSettings

__all__ = ["EvictedItem", "WorkingItem", "WorkingMemory"]

SessionKey = tuple[str, str]  # (namespace, session)


@dataclass(slots=True)
class WorkingItem:
    key: str
    content: str
    importance: float
    attention: float
    tags: list[str]
    created_at: float
    last_access: float
    access_count: int = 0

    @property
    def size(self) -> int:
        return len(self.content.encode())


@dataclass(slots=True)
class EvictedItem:
    namespace: str
    session: str
    item: WorkingItem
    reason: str  # capacity | session_capacity | bytes | expired


@dataclass
class _Session:
    items: dict[str, WorkingItem] = field(default_factory=dict)
    last_touch: float = 0.0
    bytes: int = 0


class WorkingMemory:
    def __init__(self, settings: WorkingSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._sessions: OrderedDict[SessionKey, _Session] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._keys = itertools.count(1)

    # --- scoring -----------------------------------------------------------------------------------

    def score(self, item: WorkingItem, now: float, max_accesses: int) -> float:
        w = self.settings.weights
        total = w.recency + w.importance + w.frequency
        if total <= 0:
            return 0.0
        recency = 0.5 ** (max(0.0, now - item.last_access) / self.settings.recency_half_life)
        frequency = math.log1p(item.access_count) / math.log1p(max_accesses) if max_accesses > 0 else 0.0
        return (w.recency * recency + w.importance * item.importance * item.attention + w.frequency * frequency) / total

    def _scored(self, sess: _Session, now: float) -> list[tuple[float, WorkingItem]]:
        most = max((i.access_count for i in sess.items.values()), default=0)
        return [(self.score(i, now, most), i) for i in sess.items.values()]

    # --- operations ----------------------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        session: str,
        content: str,
        *,
        key: str | None = None,
        importance: float = 0.5,
        attention: float = 1.0,
        tags: list[str] | None = None,
    ) -> tuple[str, list[EvictedItem]]:
        now = self._clock()
        sk = (namespace, session)
        evicted: list[EvictedItem] = []
        sess = self._sessions.get(sk)
        if sess is None:
            sess = self._sessions[sk] = _Session(last_touch=now)
            while len(self._sessions) > self.settings.max_sessions:
                evicted += self._drop_session(next(iter(self._sessions)), "session_capacity")
        self._sessions.move_to_end(sk)
        sess.last_touch = now
        key = key or f"w{next(self._keys)}"
        old = sess.items.get(key)
        if old is not None:
            self._account(sess, -old.size)
            old.content, old.importance, old.attention = content, importance, attention
            old.tags = list(tags or [])
            old.last_access = now
            old.access_count += 1
            self._account(sess, old.size)
        else:
            item = WorkingItem(key, content, importance, attention, list(tags or []), now, now)
            sess.items[key] = item
            self._account(sess, item.size)
            while len(sess.items) > self.settings.max_items:
                evicted.append(self._evict_lowest(sk, sess, now, keep=key, reason="capacity"))
        evicted += self._enforce_bytes(now, keep=(sk, key))
        return key, evicted

    def get(self, namespace: str, session: str, key: str) -> WorkingItem | None:
        sess = self._sessions.get((namespace, session))
        item = sess.items.get(key) if sess is not None else None
        if item is None or sess is None:
            return None
        now = self._clock()
        item.access_count += 1
        item.last_access = now
        sess.last_touch = now
        self._sessions.move_to_end((namespace, session))
        return item

    def ranked(self, namespace: str, session: str) -> list[tuple[float, WorkingItem]]:
        """Items with their scores, highest first (does not count as an access)."""
        sess = self._sessions.get((namespace, session))
        if sess is None:
            return []
        return sorted(self._scored(sess, self._clock()), key=lambda pair: (-pair[0], pair[1].key))

    def scores(self, namespace: str, session: str) -> dict[str, float]:
        return {item.key: score for score, item in self.ranked(namespace, session)}

    def clear(self, namespace: str, session: str, keys: list[str] | None = None) -> list[WorkingItem]:
        sk = (namespace, session)
        sess = self._sessions.get(sk)
        if sess is None:
            return []
        if keys is None:
            removed = list(sess.items.values())
            self._account(sess, -sess.bytes)
            del self._sessions[sk]
            return removed
        removed = []
        for key in keys:
            item = sess.items.pop(key, None)
            if item is not None:
                self._account(sess, -item.size)
                removed.append(item)
        if not sess.items:
            del self._sessions[sk]
        return removed

    def expire(self) -> list[EvictedItem]:
        """Evict the sessions idle for longer than ``session_ttl``."""
        now = self._clock()
        stale = [sk for sk, sess in self._sessions.items() if now - sess.last_touch > self.settings.session_ttl]
        evicted: list[EvictedItem] = []
        for sk in stale:
            evicted += self._drop_session(sk, "expired")
        return evicted

    def drop_namespace(self, namespace: str) -> int:
        """Forget every session of ``namespace`` (no promotion); returns the items dropped."""
        count = 0
        for sk in [sk for sk in self._sessions if sk[0] == namespace]:
            sess = self._sessions.pop(sk)
            self._bytes -= sess.bytes
            count += len(sess.items)
        return count

    def stats(self, namespace: str | None = None) -> tuple[int, int]:
        """(sessions, items), of one namespace or of all."""
        sessions = [s for sk, s in self._sessions.items() if namespace is None or sk[0] == namespace]
        return len(sessions), sum(len(s.items) for s in sessions)

    @property
    def bytes(self) -> int:
        return self._bytes

    # --- internals ---------------------------------------------------------------------------------------

    def _account(self, sess: _Session, delta: int) -> None:
        sess.bytes += delta
        self._bytes += delta

    def _evict_lowest(self, sk: SessionKey, sess: _Session, now: float, keep: str | None, reason: str) -> EvictedItem:
        candidates = [(score, item) for score, item in self._scored(sess, now) if item.key != keep]
        _, victim = min(candidates, key=lambda pair: (pair[0], pair[1].last_access))
        del sess.items[victim.key]
        self._account(sess, -victim.size)
        return EvictedItem(sk[0], sk[1], victim, reason)

    def _drop_session(self, sk: SessionKey, reason: str) -> list[EvictedItem]:
        sess = self._sessions.pop(sk)
        self._bytes -= sess.bytes
        return [EvictedItem(sk[0], sk[1], item, reason) for item in sess.items.values()]

    def _enforce_bytes(self, now: float, keep: tuple[SessionKey, str]) -> list[EvictedItem]:
        evicted: list[EvictedItem] = []
        while self._bytes > self.settings.max_bytes:
            victim_session = next(
                (sk for sk, sess in self._sessions.items() if any(not (sk == keep[0] and k == keep[1]) for k in sess.items)),
                None,
            )
            if victim_session is None:
                break  # only the item being put is left; it alone may exceed the budget
            sess = self._sessions[victim_session]
            evicted.append(self._evict_lowest(victim_session, sess, now, keep[1] if victim_session == keep[0] else None, "bytes"))
            if not sess.items:
                del self._sessions[victim_session]
        return evicted
