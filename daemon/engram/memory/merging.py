"""Near-duplicate episodes merged during sleep: found by the vector index, merged reversibly.

``memory.remember`` keeps one episode per normalised text (:mod:`engram.memory.textkey`), but
"Meeting moved to Tuesday." and "The meeting moved to Tuesday" are two. Sleep's deduplication
stage finds such pairs (cosine similarity of their embeddings at least a threshold, same
namespace: each namespace has its own index) and merges each into one episode:

- the episode *kept* is the older one (lower seq), or the pinned one: a pinned episode is never
  the one merged away, and two pinned episodes are left alone;
- what pointed at the one *merged away* now points at the kept one too: its tags, the concepts
  that mention it (with their link weight) and the relations learned from it (as sources); its
  access count is added to the kept one's and the later last access kept;
- the merged-away episode is *archived* (out of recall and of the vector index, still readable by
  id), so sleep's forgetting deletes it after ``sleep.forgetting.grace``, audited, like any other
  archived episode. Its own tag, link and source rows stay until then, so nothing learned from it
  is lost if the merge is undone.

Everything is journalled (:mod:`engram.memory.journal`) in the transaction that does it: each tag,
link and source added to the kept episode (``tag``, ``link``, ``relation_source``), its access
count before (``access``), and the archiving (``archived``, which also lists which episode each
merged one went into, for dream replay: :func:`merged_into`). Undoing the journal and unarchiving
restore both episodes exactly as they were (a rollback of the stage, or dream replay finding
recall worse).

Blocking: worker threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engram.memory import journal
from engram.memory.journal import Tag
from engram.memory.vectors import from_blob

if TYPE_CHECKING:
    from engram.memory.episodic import Episodic

__all__ = ["merge", "merged_into", "near_duplicates"]

_NEIGHBOURS = 4  # nearest neighbours looked at per episode (the closest is usually itself)


def near_duplicates(episodic: Episodic, namespace: str, since: float, after: int, limit: int, threshold: float,
                    stop: Callable[[], bool] | None = None) -> tuple[list[tuple[int, int, float]], int | None]:
    """Pairs (older seq, newer seq, cosine) of live episodes at least ``threshold`` similar, for
    the page of up to ``limit`` live episodes recorded at or after ``since`` with seq above
    ``after`` (each searched against the whole namespace); and the last seq of the page (None:
    the page was empty). ``stop`` ends the page early (the last seq says how far it got)."""
    with episodic.db.read() as conn:
        rows = conn.execute(
            "SELECT seq, dim, embedding FROM memory_episodes WHERE namespace = ? AND seq > ? AND recorded_at >= ? "
            "AND archived_at IS NULL ORDER BY seq LIMIT ?",
            (namespace, after, since, limit),
        ).fetchall()
    if not rows:
        return [], None
    dim = episodic.index.dim(namespace)
    found: dict[tuple[int, int], float] = {}
    last = after
    for seq, width, blob in rows:
        if stop is not None and stop() and last > after:
            break
        last = seq
        if width != dim:
            continue
        seqs, sims = episodic.index.search(namespace, from_blob(blob, width), _NEIGHBOURS)
        for other, sim in zip(seqs.tolist(), sims.tolist()):
            if other != seq and other >= 0 and sim >= threshold:
                pair = (min(seq, other), max(seq, other))
                found[pair] = max(found.get(pair, -1.0), float(sim))
    return [(a, b, s) for (a, b), s in sorted(found.items())], last


def merge(episodic: Episodic, tag: Tag, pairs: Sequence[tuple[int, int, float]], now: float,
          give_way: Callable[[], bool] | None = None) -> list[tuple[str, str, float]]:
    """Merge each pair (see the module docstring) in one background transaction, journalled
    under ``tag``; returns (kept id, merged id, similarity) of the merges done. A pair is skipped
    when either episode is no longer live, when both are pinned, or when one of them was already
    merged or kept by an earlier pair of the call (chains are merged on a later run)."""
    namespace = tag[1]
    done: list[tuple[str, str, float]] = []
    dropped: list[int] = []
    with episodic.db.transaction(background=True, give_way=give_way) as conn:
        involved = sorted({s for a, b, _ in pairs for s in (a, b)})
        state = _live(conn, namespace, involved)
        used: set[int] = set()
        for a, b, sim in sorted(pairs, key=lambda p: -p[2]):
            if a not in state or b not in state or a in used or b in used:
                continue
            keep, drop = (a, b) if not state[b][1] else (b, a)
            if state[drop][1]:
                continue  # both pinned
            _move(conn, tag, keep, drop)
            used.update((keep, drop))
            dropped.append(drop)
            done.append((state[keep][0], state[drop][0], sim))
        if dropped:
            archived = episodic.store.archive(conn, namespace, dropped, now)  # all of them: live and unpinned, checked above
            into = [[gone, kept] for kept, gone, _ in done]
            journal.record(conn, tag, [("archived", archived[0], {"seqs": archived, "at": now, "merged": into})])
    if dropped:
        # Committed: only now do the merged-away vectors leave the index (a crash in between is
        # repaired at start, when the index is reconciled with the live rows).
        episodic.index.remove(namespace, dropped)
        for seq in dropped:
            episodic.access.pop(seq, None)
    return done


def _live(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int]) -> dict[int, tuple[str, bool]]:
    """seq -> (id, pinned) of the live episodes among ``seqs``."""
    out: dict[int, tuple[str, bool]] = {}
    for start in range(0, len(seqs), 900):
        chunk = seqs[start : start + 900]
        for seq, id_, pinned in conn.execute(
            f"SELECT seq, id, pinned FROM memory_episodes WHERE +namespace = ? AND seq IN ({','.join('?' * len(chunk))}) "
            "AND archived_at IS NULL",
            (namespace, *chunk),
        ):
            out[seq] = (id_, bool(pinned))
    return out


def _move(conn: Any, tag: Tag, keep: int, drop: int) -> None:
    """Point at ``keep`` what points at ``drop`` (tags, concept links, relation sources) and add
    its accesses, journalling each addition and the access count before."""
    tags = [t for (t,) in conn.execute(
        "SELECT tag FROM memory_episode_tags WHERE seq = ? AND tag NOT IN (SELECT tag FROM memory_episode_tags WHERE seq = ?)",
        (drop, keep),
    )]
    conn.executemany("INSERT INTO memory_episode_tags (seq, tag) VALUES (?, ?)", [(keep, t) for t in tags])
    links = conn.execute(
        "SELECT concept, weight FROM memory_concept_episodes WHERE episode = ? "
        "AND concept NOT IN (SELECT concept FROM memory_concept_episodes WHERE episode = ?)",
        (drop, keep),
    ).fetchall()
    conn.executemany("INSERT INTO memory_concept_episodes (concept, episode, weight) VALUES (?, ?, ?)",
                     [(c, keep, w) for c, w in links])
    sources = [r for (r,) in conn.execute(
        "SELECT relation FROM memory_relation_sources WHERE episode = ? "
        "AND relation NOT IN (SELECT relation FROM memory_relation_sources WHERE episode = ?)",
        (drop, keep),
    )]
    conn.executemany("INSERT INTO memory_relation_sources (relation, episode) VALUES (?, ?)", [(r, keep) for r in sources])
    count, last = conn.execute("SELECT access_count, last_access FROM memory_episodes WHERE seq = ?", (keep,)).fetchone()
    more, later = conn.execute("SELECT access_count, last_access FROM memory_episodes WHERE seq = ?", (drop,)).fetchone()
    if more or later is not None:
        conn.execute("UPDATE memory_episodes SET access_count = ?, last_access = ? WHERE seq = ?",
                     (count + more, max((t for t in (last, later) if t is not None), default=None), keep))
    journal.record(conn, tag, [
        *(("tag", f"{keep}:{t}", None) for t in tags),
        *(("link", f"{c}:{keep}", None) for c, _ in links),
        *(("relation_source", f"{r}:{keep}", None) for r in sources),
        ("access", keep, {"access_count": count, "last_access": last}),
    ])



def merged_into(episodic: Episodic, tag: Tag) -> dict[str, str]:
    """Merged id -> kept id of the merges journalled under ``tag`` (dream replay counts a merged
    episode as found when the one it was merged into is)."""
    with episodic.db.read() as conn:
        found = journal.entries(conn, tag, "archived")
    return {gone: kept for _id, _kind, _ref, before in found for gone, kept in before.get("merged", [])}
