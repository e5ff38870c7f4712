"""Semantic memory: concepts and typed, weighted, bi-temporal relations (blocking; worker threads).

Two times per relation. *Valid time* (``valid_from``/``valid_to``) is when the fact held in the
world; *transaction time* (``recorded_at``/``retracted_at``) is when engram believed it. Nothing
is updated in place or deleted on contradiction: a relation that a new one supersedes (same
source, type and destination with another weight or validity) is *retracted* (``retracted_at``,
``retracted_by``), so ``as_of`` queries still see what engram believed then. Only forgetting
deletes: a relation learned solely from episodes that are all forgotten goes with them (see
:meth:`engram.memory.store.EpisodeStore.delete`).

**Beliefs that update.** A relation type is *functional* (one destination per source at a time:
``lives_in``, ``works_at``, ...) when the upsert says ``exclusive`` or, without that flag, when
the type is in ``memory.graph.functional_types`` or ``memory.graph.exclusive_types``. A new fact N
of a functional type meets each believed *rival* R (same source and type, another destination,
overlapping valid time) by comparing where their validity starts (an unknown start, NULL, counts
as the earliest):

- R starts before N ("Ada lives_in Paris" from 2021, then "Ada lives_in Berlin" from 2024): the
  world changed. R's validity ends where N's begins: R is retracted and replaced by a copy with
  ``valid_to`` = N's ``valid_from`` and ``superseded_by`` = N (its sources go with it). So
  ``valid_at`` 2022 still answers Paris, ``valid_at`` now answers Berlin, and ``as_of`` a moment
  before the upsert still shows R as it was believed then (open-ended).
- R starts when N does (both unknown included): they cannot both hold; the newer statement is a
  *correction*. R is retracted, ``retracted_by`` and ``superseded_by`` = N.
- R starts after N: N is history arriving late (an old letter read today). R stays current and N
  is recorded ending where R begins (``valid_to`` = R's ``valid_from``, ``superseded_by`` = R).
  With several such rivals N ends at the earliest. Sending the same fact again finds that
  recorded, clipped N and changes nothing.

This is Graphiti's ``invalid_at`` model in bi-temporal form: validity is ended, the fact is kept,
and the later-starting fact wins whatever order the two arrive in. Recall lowers episodes whose
facts were all superseded (``superseded_by`` set) through the ``superseded`` part of its score
(:mod:`engram.memory.scoring`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram.errors import NotFound
from engram.memory import ids as idgen
from engram.memory.activation import spread
from engram.memory.db import MemoryDB
from engram.memory.settings import GraphSettings
from engram.memory.vectors import from_blob, to_blob

__all__ = ["ConceptSpec", "GraphStore", "RelationSpec", "concept_key"]


def concept_key(name: str) -> str:
    return " ".join(name.split()).casefold()


@dataclass(slots=True)
class ConceptSpec:
    name: str
    kind: str | None = None  # None: keep (or 'entity' for a new concept)
    vector: NDArray[np.float32] | None = None
    episodes: list[str] = field(default_factory=list)  # episode ids
    # The kind is a guess (knowledge extraction's): it names a new concept, never changes a
    # stored one, so that a topic sleep made, or a kind a client set, stays what it is.
    kind_if_new: bool = False


@dataclass(slots=True)
class RelationSpec:
    src: str
    dst: str
    type: str
    weight: float
    valid_from: float | None
    valid_to: float | None
    exclusive: bool
    sources: list[str] = field(default_factory=list)  # episode ids


_REL_COLUMNS = (
    "r.seq, r.id, r.src, r.dst, r.type, r.weight, r.valid_from, r.valid_to, r.recorded_at, r.retracted_at, r.retracted_by, "
    "r.superseded_by"
)


def _overlaps(a_from: float | None, a_to: float | None, b_from: float | None, b_to: float | None) -> bool:
    return (a_from is None or b_to is None or a_from < b_to) and (b_from is None or a_to is None or b_from < a_to)


def _starts_before(a: float | None, b: float | None) -> bool:
    """Whether validity starting at ``a`` starts strictly before validity starting at ``b``
    (None: an unknown start, the earliest)."""
    return b is not None and (a is None or a < b)


class GraphStore:
    def __init__(self, db: MemoryDB, settings: GraphSettings) -> None:
        self.db = db
        self.settings = settings
        self._matrices: dict[str, tuple[NDArray[np.int64], NDArray[np.float32]]] = {}
        self._lock = threading.Lock()

    def invalidate(self, namespace: str) -> None:
        with self._lock:
            self._matrices.pop(namespace, None)

    # --- upsert -------------------------------------------------------------------------------------

    def keys_with_vectors(self, namespace: str, names: Iterable[str]) -> set[str]:
        keys = list({concept_key(n) for n in names})
        with self.db.read() as conn:
            found: set[str] = set()
            for start in range(0, len(keys), 900):
                chunk = keys[start : start + 900]
                found.update(
                    k
                    for (k,) in conn.execute(
                        f"SELECT key FROM memory_concepts WHERE +namespace = ? AND embedding IS NOT NULL AND key IN ({','.join('?' * len(chunk))})",
                        (namespace, *chunk),
                    )
                )
        return found

    def upsert(self, namespace: str, concepts: Sequence[ConceptSpec], relations: Sequence[RelationSpec], now: float,
               vectors: dict[str, NDArray[np.float32]] | None = None, background: bool = False) -> dict[str, Any]:
        """Apply concepts then relations in one transaction. ``vectors`` maps concept keys to
        embeddings for concepts that have none yet. Raises NotFound (nothing written) when an
        episode id is unknown in the namespace. ``background``: work that redoes itself after a
        crash (knowledge extraction), committed without waiting for the disk (see
        :meth:`MemoryDB.transaction`)."""
        vectors = vectors or {}
        out: dict[str, Any] = {"concepts": [], "relations": [], "retracted": [], "superseded": [], "created_concepts": [],
                               "created_relations": []}
        with self.db.transaction(background=background) as conn:
            episode_ids = {e for c in concepts for e in c.episodes} | {e for r in relations for e in r.sources}
            episodes = self._resolve_episodes(conn, namespace, episode_ids)
            seen: dict[str, tuple[int, str, str, str]] = {}

            def concept(name: str, kind: str | None, vector: NDArray[np.float32] | None, report: bool,
                        kind_if_new: bool = False) -> int:
                key = concept_key(name)
                if key in seen and not report and kind is None and vector is None:
                    return seen[key][0]
                seq, cid, cname, ckind, created = self._concept(conn, namespace, name, key, kind, vector if vector is not None else vectors.get(key), now,
                                                                kind_if_new)
                seen[key] = (seq, cid, cname, ckind)
                if created:
                    out["created_concepts"].append(cid)
                if report:
                    out["concepts"].append({"id": cid, "name": cname, "kind": ckind, "created": created})
                return seq

            for c in concepts:
                seq = concept(c.name, c.kind, c.vector, True, c.kind_if_new)
                conn.executemany(
                    "INSERT INTO memory_concept_episodes (concept, episode) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [(seq, episodes[e]) for e in c.episodes],
                )
            for r in relations:
                src = concept(r.src, None, None, False)
                dst = concept(r.dst, None, None, False)
                rel, retracted, ended = self._relation(conn, namespace, src, dst, r, [episodes[e] for e in r.sources], now)
                out["relations"].append(rel)
                out["retracted"].extend(retracted)
                out["superseded"].extend(ended)
                out["created_relations"].extend(ended)
                if rel["status"] == "created":
                    out["created_relations"].append(rel["id"])
        self.invalidate(namespace)
        return out

    @staticmethod
    def _resolve_episodes(conn: sqlite3.Connection, namespace: str, ids: set[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        wanted = sorted(ids)
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            found.update(
                conn.execute(
                    f"SELECT id, seq FROM memory_episodes WHERE +namespace = ? AND id IN ({','.join('?' * len(chunk))})",
                    (namespace, *chunk),
                ).fetchall()
            )
        missing = [i for i in wanted if i not in found]
        if missing:
            raise NotFound(f"unknown episode ids: {', '.join(missing[:20])}", reason="unknown_ids", ids=missing)
        return found

    @staticmethod
    def _concept(conn: sqlite3.Connection, namespace: str, name: str, key: str, kind: str | None,
                 vector: NDArray[np.float32] | None, now: float, kind_if_new: bool = False) -> tuple[int, str, str, str, bool]:
        row = conn.execute(
            "SELECT seq, id, name, kind, embedding IS NOT NULL FROM memory_concepts WHERE namespace = ? AND key = ?",
            (namespace, key),
        ).fetchone()
        if row is None:
            cid = idgen.new_id(idgen.CONCEPT, now)
            ckind = kind or "entity"
            seq = conn.execute(
                "INSERT INTO memory_concepts (id, namespace, name, key, kind, created_at, dim, embedding) VALUES (?,?,?,?,?,?,?,?) "
                "RETURNING seq",
                (cid, namespace, " ".join(name.split()), key, ckind, now,
                 None if vector is None else int(vector.shape[0]), None if vector is None else to_blob(vector)),
            ).fetchone()[0]
            return seq, cid, " ".join(name.split()), ckind, True
        seq, cid, cname, ckind, _has_vector = row
        if kind is not None and kind != ckind and not kind_if_new:
            conn.execute("UPDATE memory_concepts SET kind = ? WHERE seq = ?", (kind, seq))
            ckind = kind
        if vector is not None:
            conn.execute("UPDATE memory_concepts SET dim = ?, embedding = ? WHERE seq = ?", (int(vector.shape[0]), to_blob(vector), seq))
        return seq, cid, cname, ckind, False

    def _relation(self, conn: sqlite3.Connection, namespace: str, src: int, dst: int, spec: RelationSpec,
                  sources: list[int], now: float) -> tuple[dict[str, Any], list[str], list[str]]:
        """Record ``spec`` (see the module's docstring for the rule); returns it, the ids retracted
        and the ids of the closed copies of the rivals whose validity it ended."""
        retracted: list[str] = []
        ended: list[str] = []
        rivals: list[tuple[Any, ...]] = []
        if spec.exclusive:
            rivals = [
                row for row in conn.execute(
                    f"SELECT {_REL_COLUMNS} FROM memory_relations r WHERE r.src = ? AND r.type = ? AND r.dst != ? "
                    "AND r.retracted_at IS NULL",
                    (src, spec.type, dst),
                )
                if _overlaps(row[6], row[7], spec.valid_from, spec.valid_to)
            ]
        # A rival starting later ends this fact where it starts (the earliest such rival).
        valid_to, superseded_by = spec.valid_to, None
        for row in rivals:
            if _starts_before(spec.valid_from, row[6]) and (valid_to is None or row[6] < valid_to):
                valid_to, superseded_by = row[6], row[1]
        same = conn.execute(
            f"SELECT {_REL_COLUMNS} FROM memory_relations r WHERE r.src = ? AND r.type = ? AND r.dst = ? AND r.retracted_at IS NULL",
            (src, spec.type, dst),
        ).fetchall()
        for row in same:
            seq, _rid, _, _, _, weight, vfrom, vto = row[:8]
            if weight == spec.weight and vfrom == spec.valid_from and vto == valid_to:
                added = self._add_sources(conn, seq, sources)
                rel = self._relation_out(conn, seq)
                rel["status"] = "sources_added" if added else "unchanged"
                return rel, retracted, ended
        new_id = idgen.new_id(idgen.RELATION, now)
        for row in same:
            if _overlaps(row[6], row[7], spec.valid_from, valid_to):
                conn.execute("UPDATE memory_relations SET retracted_at = ?, retracted_by = ? WHERE seq = ?", (now, new_id, row[0]))
                retracted.append(row[1])
        for row in rivals:
            if not _overlaps(row[6], row[7], spec.valid_from, valid_to):
                continue  # starts after this fact, which now ends where it begins
            if _starts_before(row[6], spec.valid_from):  # the world changed: the rival held until now
                copy_id = self._close(conn, row, spec.valid_from, new_id, now)
                conn.execute("UPDATE memory_relations SET retracted_at = ?, retracted_by = ? WHERE seq = ?", (now, copy_id, row[0]))
                ended.append(copy_id)
            else:  # the same start: a correction
                conn.execute(
                    "UPDATE memory_relations SET retracted_at = ?, retracted_by = ?, superseded_by = ? WHERE seq = ?",
                    (now, new_id, new_id, row[0]),
                )
            retracted.append(row[1])
        seq = conn.execute(
            "INSERT INTO memory_relations (id, namespace, src, dst, type, weight, valid_from, valid_to, recorded_at, sourced, "
            "superseded_by) VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING seq",
            (new_id, namespace, src, dst, spec.type, spec.weight, spec.valid_from, valid_to, now, int(bool(sources)), superseded_by),
        ).fetchone()[0]
        self._add_sources(conn, seq, sources)
        rel = self._relation_out(conn, seq)
        rel["status"] = "created"
        return rel, retracted, ended

    @staticmethod
    def _close(conn: sqlite3.Connection, row: tuple[Any, ...], at: float | None, by: str, now: float) -> str:
        """Record a copy of relation ``row`` whose validity ends ``at``, superseded by ``by``, with
        the same sources; returns its id (the caller retracts the original)."""
        copy_id = idgen.new_id(idgen.RELATION, now)
        copy = conn.execute(
            "INSERT INTO memory_relations (id, namespace, src, dst, type, weight, valid_from, valid_to, recorded_at, sourced, "
            "superseded_by) SELECT ?, namespace, src, dst, type, weight, valid_from, ?, ?, sourced, ? FROM memory_relations "
            "WHERE seq = ? RETURNING seq",
            (copy_id, at, now, by, row[0]),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO memory_relation_sources (relation, episode) SELECT ?, episode FROM memory_relation_sources WHERE relation = ?",
            (copy, row[0]),
        )
        return copy_id

    @staticmethod
    def _add_sources(conn: sqlite3.Connection, relation: int, episodes: list[int]) -> int:
        if not episodes:
            return 0
        before = conn.total_changes
        conn.executemany(
            "INSERT INTO memory_relation_sources (relation, episode) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(relation, e) for e in episodes],
        )
        conn.execute("UPDATE memory_relations SET sourced = 1 WHERE seq = ?", (relation,))
        return conn.total_changes - before - 1

    def _relation_out(self, conn: sqlite3.Connection, seq: int) -> dict[str, Any]:
        return self._relations_out(conn, [seq])[seq]

    @staticmethod
    def _relations_out(conn: sqlite3.Connection, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted(set(seqs))
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {_REL_COLUMNS}, s.name, d.name FROM memory_relations r "
                f"JOIN memory_concepts s ON s.seq = r.src JOIN memory_concepts d ON d.seq = r.dst WHERE r.seq IN ({marks})",
                tuple(chunk),
            ):
                seq, rid, _, _, rtype, weight, vfrom, vto, recorded, retracted, by, superseded_by, sname, dname = row
                out[seq] = {
                    "id": rid, "src": sname, "dst": dname, "type": rtype, "weight": weight, "valid_from": vfrom,
                    "valid_to": vto, "recorded_at": recorded, "retracted_at": retracted, "retracted_by": by,
                    "superseded_by": superseded_by, "sources": [],
                }
            for relation, episode_id in conn.execute(
                f"SELECT s.relation, e.id FROM memory_relation_sources s JOIN memory_episodes e ON e.seq = s.episode "
                f"WHERE s.relation IN ({marks}) ORDER BY e.seq",
                tuple(chunk),
            ):
                out[relation]["sources"].append(episode_id)
        return out

    # --- superseded beliefs, for recall ------------------------------------------------------------

    @staticmethod
    def superseded_episodes(conn: sqlite3.Connection, episodes: Sequence[int]) -> set[int]:
        """The episodes among ``episodes`` that are sources of superseded facts (``superseded_by``
        set) and of no current one (believed, not superseded)."""
        found: set[int] = set()
        wanted = sorted(set(episodes))
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            found.update(
                episode
                for (episode,) in conn.execute(
                    "SELECT s.episode FROM memory_relation_sources s JOIN memory_relations r ON r.seq = s.relation "
                    f"WHERE s.episode IN ({','.join('?' * len(chunk))}) GROUP BY s.episode "
                    "HAVING max(r.superseded_by IS NOT NULL) = 1 AND max(r.retracted_at IS NULL AND r.superseded_by IS NULL) = 0",
                    tuple(chunk),
                )
            )
        return found

    @staticmethod
    def superseded_facts(conn: sqlite3.Connection, episodes: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Episode seq -> the superseded facts learned from it (the reasons recall gives)."""
        out: dict[int, list[dict[str, Any]]] = {}
        wanted = sorted(set(episodes))
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            for episode, rid, sname, rtype, dname, vto, by in conn.execute(
                "SELECT s.episode, r.id, a.name, r.type, b.name, r.valid_to, r.superseded_by FROM memory_relation_sources s "
                "JOIN memory_relations r ON r.seq = s.relation JOIN memory_concepts a ON a.seq = r.src "
                f"JOIN memory_concepts b ON b.seq = r.dst WHERE s.episode IN ({','.join('?' * len(chunk))}) "
                "AND r.superseded_by IS NOT NULL ORDER BY s.episode, r.seq",
                tuple(chunk),
            ):
                out.setdefault(episode, []).append(
                    {"relation": rid, "src": sname, "type": rtype, "dst": dname, "valid_to": vto, "superseded_by": by}
                )
        return out

    # --- queries --------------------------------------------------------------------------------------

    def _visible(self, as_of: float | None, valid_at: float | None, types: list[str] | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if as_of is None:
            clauses.append("r.retracted_at IS NULL")
        else:
            clauses.append("r.recorded_at <= ? AND (r.retracted_at IS NULL OR r.retracted_at > ?)")
            args += [as_of, as_of]
        if valid_at is not None:
            clauses.append("(r.valid_from IS NULL OR r.valid_from <= ?) AND (r.valid_to IS NULL OR r.valid_to > ?)")
            args += [valid_at, valid_at]
        if types:
            clauses.append(f"r.type IN ({','.join('?' * len(types))})")
            args += types
        return " AND ".join(clauses), args

    @staticmethod
    def _concept_by_name(conn: sqlite3.Connection, namespace: str, name: str) -> tuple[int, str, str, str]:
        row = conn.execute(
            "SELECT seq, id, name, kind FROM memory_concepts WHERE namespace = ? AND key = ?", (namespace, concept_key(name))
        ).fetchone()
        if row is None:
            raise NotFound(f"no concept named {name!r}", reason="unknown_concept", concept=name)
        return row

    def query(self, namespace: str, name: str, depth: int, direction: str, types: list[str] | None,
              as_of: float | None, valid_at: float | None, to: str | None) -> dict[str, Any]:
        limit = self.settings.max_results
        where, args = self._visible(as_of, valid_at, types)
        with self.db.read() as conn:
            start, start_id, start_name, start_kind = self._concept_by_name(conn, namespace, name)
            target = self._concept_by_name(conn, namespace, to)[0] if to is not None else None
            best: dict[int, tuple[int, float, list[int]]] = {start: (0, 1.0, [])}  # concept -> (depth, weight, relation seqs)
            adjacency: dict[int, list[tuple[int, int, float]]] = {}  # concept -> [(relation seq, other concept, weight)]
            frontier = {start}
            truncated = False
            for level in range(1, depth + 1):
                if not frontier:
                    break
                edges = self._edges(conn, frontier, direction, where, args)
                reached: set[int] = set()
                for rseq, a, b, weight in edges:
                    for here, there in self._directions(a, b, direction):
                        if here not in frontier:
                            continue
                        adjacency.setdefault(here, []).append((rseq, there, weight))
                        _, w, path = best[here]
                        candidate = (level, w * weight, [*path, rseq])
                        old = best.get(there)
                        if old is None or (old[0] == level and candidate[1] > old[1]):
                            best[there] = candidate
                            reached.add(there)
                frontier = {c for c in reached if best[c][0] == level}
            neighbours = sorted(((c, v) for c, v in best.items() if c != start), key=lambda cv: (cv[1][0], -cv[1][1]))
            if len(neighbours) > limit:
                neighbours, truncated = neighbours[:limit], True
            paths: list[tuple[list[int], list[int], float]] = []
            if target is not None:
                paths, more = self._paths(adjacency, start, target, depth, limit)
                truncated = truncated or more
            rel_seqs = {r for _, (_, _, path) in neighbours for r in path} | {r for _, rels, _ in paths for r in rels}
            relations = self._relations_out(conn, rel_seqs)
            concept_seqs = {c for c, _ in neighbours} | {c for nodes, _, _ in paths for c in nodes}
            concepts = self._concepts_out(conn, concept_seqs)
        return {
            "concept": {"id": start_id, "name": start_name, "kind": start_kind},
            "neighbours": [
                {"concept": concepts[c], "depth": d, "weight": w, "path": [relations[r]["id"] for r in path]}
                for c, (d, w, path) in neighbours
            ],
            "relations": [relations[r] for r in sorted(relations)],
            "paths": [
                {"concepts": [start_name, *(concepts[c]["name"] for c in nodes[1:])], "relations": [relations[r]["id"] for r in rels], "weight": w}
                for nodes, rels, w in paths
            ],
            "truncated": truncated,
        }

    @staticmethod
    def _directions(a: int, b: int, direction: str) -> list[tuple[int, int]]:
        if direction == "out":
            return [(a, b)]
        if direction == "in":
            return [(b, a)]
        return [(a, b), (b, a)]

    @staticmethod
    def _edges(conn: sqlite3.Connection, frontier: set[int], direction: str, where: str, args: list[Any]) -> list[tuple[int, int, int, float]]:
        nodes = sorted(frontier)
        found: dict[int, tuple[int, int, int, float]] = {}
        for start in range(0, len(nodes), 400):
            chunk = nodes[start : start + 400]
            marks = ",".join("?" * len(chunk))
            sides = {"out": ["r.src"], "in": ["r.dst"], "both": ["r.src", "r.dst"]}[direction]
            for side in sides:
                for row in conn.execute(
                    f"SELECT r.seq, r.src, r.dst, r.weight FROM memory_relations r WHERE {side} IN ({marks}) AND {where}",
                    (*chunk, *args),
                ):
                    found[row[0]] = row
        return list(found.values())

    @staticmethod
    def _paths(adjacency: dict[int, list[tuple[int, int, float]]], start: int, target: int, depth: int,
               limit: int) -> tuple[list[tuple[list[int], list[int], float]], bool]:
        paths: list[tuple[list[int], list[int], float]] = []
        more = False

        def walk(node: int, nodes: list[int], rels: list[int], weight: float) -> None:
            nonlocal more
            if len(paths) >= limit * 4:
                more = True
                return
            if node == target and rels:
                paths.append((list(nodes), list(rels), weight))
                return
            if len(rels) >= depth:
                return
            for rseq, there, w in adjacency.get(node, []):
                if there in nodes:
                    continue
                nodes.append(there)
                rels.append(rseq)
                walk(there, nodes, rels, weight * w)
                nodes.pop()
                rels.pop()

        walk(start, [start], [], 1.0)
        paths.sort(key=lambda p: (-p[2], len(p[1])))
        if len(paths) > limit:
            paths, more = paths[:limit], True
        return paths, more

    @staticmethod
    def _concepts_out(conn: sqlite3.Connection, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted(set(seqs))
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            for seq, cid, name, kind in conn.execute(
                f"SELECT seq, id, name, kind FROM memory_concepts WHERE seq IN ({','.join('?' * len(chunk))})", tuple(chunk)
            ):
                out[seq] = {"id": cid, "name": name, "kind": kind}
        return out

    # --- spreading activation -------------------------------------------------------------------------

    def _matrix(self, namespace: str, dim: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        with self._lock:
            cached = self._matrices.get(namespace)
        if cached is not None and cached[1].shape[1] == dim:
            return cached
        seqs: list[int] = []
        rows: list[NDArray[np.float32]] = []
        with self.db.read() as conn:
            for seq, blob in conn.execute(
                "SELECT seq, embedding FROM memory_concepts WHERE namespace = ? AND dim = ? ORDER BY seq", (namespace, dim)
            ):
                seqs.append(seq)
                rows.append(from_blob(blob, dim))
        matrix = (np.asarray(seqs, dtype=np.int64), np.vstack(rows) if rows else np.zeros((0, dim), np.float32))
        with self._lock:
            self._matrices[namespace] = matrix
        return matrix

    def activate(self, namespace: str, query: NDArray[np.float32]) -> dict[int, float]:
        """Episode seq -> activation, from the concepts nearest to ``query``."""
        s = self.settings
        seqs, matrix = self._matrix(namespace, int(query.shape[0]))
        if not len(seqs):
            return {}
        sims = matrix @ query
        order = np.argsort(-sims)[: s.activation_seeds]
        seeds = {int(seqs[i]): float(sims[i]) for i in order if sims[i] >= s.activation_min_similarity}
        if not seeds:
            return {}
        with self.db.read() as conn:

            def edges_of(frontier: set[int]) -> list[tuple[int, int, float]]:
                rows = self._edges(conn, frontier, "both", "r.retracted_at IS NULL", [])
                return [(a, b, w) for _, a, b, w in rows]

            activation = spread(seeds, edges_of, s.activation_depth, s.activation_decay)
            episodes: dict[int, float] = {}
            concepts = sorted(activation)
            for start in range(0, len(concepts), 400):
                chunk = concepts[start : start + 400]
                marks = ",".join("?" * len(chunk))
                for concept, episode, weight in conn.execute(
                    f"SELECT concept, episode, weight FROM memory_concept_episodes WHERE concept IN ({marks})", tuple(chunk)
                ):
                    episodes[episode] = max(episodes.get(episode, 0.0), activation[concept] * weight)
                for src, dst, weight, episode in conn.execute(
                    "SELECT r.src, r.dst, r.weight, s.episode FROM memory_relations r JOIN memory_relation_sources s ON s.relation = r.seq "
                    f"WHERE r.retracted_at IS NULL AND (r.src IN ({marks}) OR r.dst IN ({marks}))",
                    (*chunk, *chunk),
                ):
                    value = max(activation.get(src, 0.0), activation.get(dst, 0.0)) * weight
                    episodes[episode] = max(episodes.get(episode, 0.0), value)
        return episodes
