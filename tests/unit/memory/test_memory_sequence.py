"""Sequence recall (engram.memory.sequence, memory.sequence): DTW with a band, pruning by lower
bounds that finds exactly what brute force finds, and the method through the memory part."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engram.errors import InvalidParams, NotFound
from engram.memory.api import RememberParams, SequenceParams
from engram.memory.sequence import brute_force, cost_matrix, dtw, lower_bounds, search

from tests.unit.memory.conftest import ctx


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def walk(rng: np.random.Generator, n: int, dim: int, step: float = 0.4) -> np.ndarray:
    """A random walk on the sphere: neighbouring elements alike, as in a conversation."""
    x = np.cumsum(rng.normal(size=(n, dim)) * step, axis=0) + rng.normal(size=dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def full_dtw(cost: np.ndarray) -> float:
    """Textbook DTW without a band: the reference for a band as wide as the block."""
    m, n = cost.shape
    d = np.full((m + 1, n + 1), math.inf)
    d[0, 0] = 0.0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            d[i, j] = cost[i - 1, j - 1] + min(d[i - 1, j - 1], d[i - 1, j], d[i, j - 1])
    return float(d[m, n])


def lb_keogh(query: np.ndarray, stretch: np.ndarray, window: int) -> float:
    """LB_Keogh for 1 - cos of unit vectors (half the squared Euclidean distance): each stretch
    element's distance to the box envelope of the query elements its band reaches."""
    m = len(query)
    total = 0.0
    for j in range(m):
        band = query[max(0, j - window) : min(m, j + window + 1)]
        low, high = band.min(axis=0), band.max(axis=0)
        total += 0.5 * float(np.sum((stretch[j] - np.clip(stretch[j], low, high)) ** 2))
    return total


def test_identical_sequences_are_at_distance_zero() -> None:
    q = unit(np.random.default_rng(1), 7, 16)
    for window in (0, 1, 3, 6):
        assert dtw(cost_matrix(q, q), window) == pytest.approx(0.0, abs=1e-12)


def test_band_zero_is_the_diagonal_and_a_full_band_is_unconstrained_dtw() -> None:
    rng = np.random.default_rng(2)
    q, x = unit(rng, 6, 8), unit(rng, 6, 8)
    cost = cost_matrix(q, x)
    assert dtw(cost, 0) == pytest.approx(float(np.trace(cost)))
    assert dtw(cost, 5) == pytest.approx(full_dtw(cost))
    assert dtw(cost, 50) == pytest.approx(full_dtw(cost))
    assert dtw(cost, 0) >= dtw(cost, 1) >= dtw(cost, 2) >= dtw(cost, 5)


def test_the_band_is_respected() -> None:
    # q is x shifted by two steps: a band of 2 aligns them, a band of 1 cannot
    rng = np.random.default_rng(3)
    base = unit(rng, 12, 8)
    q, x = base[2:10], base[0:8]
    cost = cost_matrix(q, x)
    outside = np.abs(np.subtract.outer(np.arange(8), np.arange(8))) > 1
    wide, cheap = cost.copy(), cost.copy()
    wide[outside], cheap[outside] = 1e6, 0.0
    assert dtw(wide, 1) == dtw(cost, 1) == dtw(cheap, 1)  # cells outside the band are never read
    assert dtw(wide, 2) == pytest.approx(dtw(cost, 1))  # a wider band that must avoid them finds the band-1 path
    assert dtw(cheap, 2) < dtw(cost, 1)  # and one that may use them does
    assert dtw(cost, 2) < dtw(cost, 1)  # the shift of two fits in a band of 2


def test_dtw_abandons_only_above_its_limit() -> None:
    rng = np.random.default_rng(4)
    cost = cost_matrix(unit(rng, 9, 8), unit(rng, 9, 8))
    exact = dtw(cost, 2)
    assert dtw(cost, 2, limit=exact) == exact
    assert dtw(cost, 2, limit=exact * 0.5) == math.inf


@pytest.mark.parametrize("window", [0, 1, 2, 4])
def test_lower_bounds_lie_between_lb_keogh_and_dtw(window: int) -> None:
    rng = np.random.default_rng(10 + window)
    q, stream = walk(rng, 8, 6), walk(rng, 60, 6)
    cost = cost_matrix(q, stream)
    bounds = lower_bounds(cost, 8, window)
    assert len(bounds) == 53
    for t, bound in enumerate(bounds):
        exact = dtw(cost[:, t : t + 8], window)
        assert lb_keogh(q, stream[t : t + 8], window) <= bound + 1e-9
        assert bound <= exact + 1e-9


@pytest.mark.parametrize(("seed", "m", "window", "k"), [(0, 5, 0, 1), (1, 8, 1, 3), (2, 8, 2, 10), (3, 12, 3, 5),
                                                       (4, 6, 5, 7), (5, 10, 20, 2), (6, 4, 1, 200)])
def test_pruned_search_returns_what_brute_force_returns(seed: int, m: int, window: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 12
    streams = [walk(rng, int(n), dim) for n in rng.integers(0, 80, size=9)]
    query = walk(rng, m, dim)
    # a planted near copy, so the k-th best is small and the bound prunes
    host = max(range(len(streams)), key=lambda s: len(streams[s]))
    streams[host][5 : 5 + m] = query + rng.normal(scale=0.05, size=query.shape)
    streams[host] /= np.linalg.norm(streams[host], axis=1, keepdims=True)
    if seed % 2:  # the index's vectors are float32: the product is then in float32
        streams = [x.astype(np.float32) for x in streams]
    fast, slow = search(query, streams, k, window), brute_force(query, streams, k, window)
    assert fast.matches == slow.matches  # same stretches, same order, bit-identical distances
    assert len(fast.matches) == min(k, slow.candidates)
    assert fast.candidates == slow.candidates and fast.computed <= slow.computed
    assert (fast.matches[0].stream, fast.matches[0].start) == (host, 5)


def test_ties_are_broken_by_position_in_both_searches() -> None:
    rng = np.random.default_rng(7)
    pattern = unit(rng, 3, 4)
    stream = np.vstack([pattern, pattern, pattern])  # three identical stretches at 0, 3 and 6
    streams = [stream, stream.copy()]
    fast, slow = search(pattern, streams, 4, 1), brute_force(pattern, streams, 4, 1)
    assert fast.matches == slow.matches
    assert [(x.stream, x.start) for x in fast.matches] == [(0, 0), (0, 3), (0, 6), (1, 0)]


def test_skipped_positions_are_in_no_returned_stretch() -> None:
    rng = np.random.default_rng(8)
    streams = [walk(rng, 40, 6), walk(rng, 30, 6)]
    query = streams[0][10:15].copy()
    skip = [set(range(10, 15)), set()]
    fast, slow = search(query, streams, 6, 1, skip), brute_force(query, streams, 6, 1, skip)
    assert fast.matches == slow.matches
    assert all(not (x.stream == 0 and x.start + 5 > 10 and x.start < 15) for x in fast.matches)
    assert fast.candidates == (40 - 4 - 9) + (30 - 4)


def test_bad_arguments_are_refused() -> None:
    q = unit(np.random.default_rng(9), 3, 4)
    with pytest.raises(ValueError):
        search(q, [unit(np.random.default_rng(9), 5, 5)], 1, 1)
    with pytest.raises(ValueError):
        search(q, [], 0, 1)
    with pytest.raises(ValueError):
        brute_force(q, [], 1, -1)
    with pytest.raises(ValueError):
        dtw(np.zeros((2, 3)), 1)


async def test_memory_sequence_finds_the_stretch_and_what_came_next(make_memory) -> None:
    rng = np.random.default_rng(11)
    dim = 32
    routine = walk(rng, 4, dim, step=0.8)  # e.g. wake up, coffee, email, stand-up
    items, expected_next = [], []
    t0 = 1_700_000_000
    for s in range(3):
        noise = walk(rng, 10, dim)
        stream = np.vstack([noise[:3], routine + rng.normal(scale=0.02, size=routine.shape), noise[3:]])
        stream /= np.linalg.norm(stream, axis=1, keepdims=True)
        order = rng.permutation(len(stream))  # remembered out of order: time orders the stream
        for i in order:
            items.append({"text": f"day {s} step {i}", "session": f"day-{s}", "time": t0 + 1000 * s + int(i),
                          "vector": stream[i].tolist()})
    async with make_memory() as (memory, _):
        ids = (await memory.remember(ctx(), RememberParams.model_validate({"items": items}))).ids
        by_text = {item["text"]: i for item, i in zip(items, ids)}
        for s in range(3):
            expected_next.append([by_text[f"day {s} step {i}"] for i in range(7, 11)])
        result = await memory.sequence(ctx(), SequenceParams.model_validate(
            {"vectors": routine.tolist(), "k": 3, "window": 1}))
        assert result.window == 1 and result.candidates == 3 * 11  # 14 episodes a day: 11 stretches of 4
        assert [m.session for m in sorted(result.matches, key=lambda m: m.session or "")] == ["day-0", "day-1", "day-2"]
        for match in result.matches:
            s = int(match.session[-1])
            assert match.episodes == [by_text[f"day {s} step {i}"] for i in range(3, 7)]
            assert match.next == expected_next[s]
            assert match.distance < 0.05
        assert [m.distance for m in result.matches] == sorted(m.distance for m in result.matches)

        # by episode ids: day 0's routine finds days 1 and 2, never itself
        own = [by_text[f"day 0 step {i}"] for i in range(3, 7)]
        by_ids = await memory.sequence(ctx(), SequenceParams.model_validate({"episodes": own, "k": 2}))
        assert {m.session for m in by_ids.matches} == {"day-1", "day-2"}
        assert not set(own) & {e for m in by_ids.matches for e in m.episodes}
        assert by_ids.window == 1 and by_ids.candidates == 4 + 2 * 11  # day 0: only those after its routine

        cases = [
            ({"k": 1}, "episodes", "sequence_query"),
            ({"vectors": routine.tolist(), "episodes": own}, "vectors", "sequence_query"),
            ({"vectors": routine[:1].tolist()}, "vectors", "sequence_length"),
            ({"vectors": [routine[0].tolist()] * 257}, "vectors", "sequence_length"),
            ({"vectors": routine.tolist(), "k": 100_000}, "k", "k_too_large"),
            ({"vectors": [v[:8] for v in routine.tolist()]}, "vectors.0", "dimension_mismatch"),
            ({"episodes": [own[0], "nope"]}, "episodes.1", "bad_id"),
        ]
        for params, field, reason in cases:
            with pytest.raises(InvalidParams) as err:
                await memory.sequence(ctx(), SequenceParams.model_validate(params))
            assert err.value.data["field"] == field and err.value.data["reason"] == reason, params
        with pytest.raises(NotFound) as missing:
            await memory.sequence(ctx(), SequenceParams.model_validate({"episodes": [own[0], "ep_" + "0" * 26]}))
        assert missing.value.data["reason"] == "unknown_ids"

        empty = await memory.sequence(ctx(uid=1001), SequenceParams.model_validate({"vectors": routine.tolist()}))
        assert empty.matches == [] and empty.candidates == 0


async def test_a_namespace_over_the_episode_bound_is_refused_before_its_vectors_are_read(make_memory) -> None:
    rng = np.random.default_rng(5)
    stream = walk(rng, 12, 8)
    items = [{"text": f"step {i}", "session": "s", "time": 1_700_000_000 + i, "vector": v.tolist()}
             for i, v in enumerate(stream)]
    query = SequenceParams.model_validate({"vectors": stream[2:5].tolist(), "k": 1})
    async with make_memory(sequence_max_episodes=12) as (memory, _):
        await memory.remember(ctx(), RememberParams.model_validate({"items": items}))
        assert len((await memory.sequence(ctx(), query)).matches) == 1  # 12 episodes: at the bound
        await memory.remember(ctx(), RememberParams.model_validate(
            {"items": [{"text": "one more", "session": "t", "time": 1_700_000_100, "vector": stream[0].tolist()}]}))
        with pytest.raises(InvalidParams) as refused:
            await memory.sequence(ctx(), query)
    assert refused.value.data["reason"] == "too_many_episodes" and refused.value.data["field"] == "vectors"
