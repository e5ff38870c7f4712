"""Sleep's topic finding on its own: average-linkage agglomeration (against a brute-force
reference), the k-means pre-grouping above max_k, and the class-based TF-IDF names."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from engram.sleep.agglomeration import Agglomeration, average_linkage
from engram.sleep.clustering import cluster, group_sums, relation_gains
from engram.sleep.topic_names import name_topics, tokens


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def separated(rng: np.random.Generator, groups: int, per: int, dim: int = 32, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``groups`` groups of ``per`` unit vectors around orthogonal centres, interleaved."""
    labels = np.tile(np.arange(groups), per)
    centres = np.eye(dim, dtype=np.float32)[:groups]
    return unit_rows(centres[labels] + rng.normal(scale=spread / np.sqrt(dim), size=(len(labels), dim))), labels


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels)}


def brute_force(vectors: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """Average linkage as its definition reads: merge the pair of groups with the highest mean
    pairwise cosine while it is at least ``threshold`` (ties: the first pair found)."""
    groups = [[i] for i in range(len(vectors))]
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    while len(groups) > 1:
        best, pair = -np.inf, None
        for a, b in itertools.combinations(range(len(groups)), 2):
            mean = sims[np.ix_(groups[a], groups[b])].mean()
            if mean > best:
                best, pair = mean, (a, b)
        if best < threshold:
            break
        a, b = pair
        groups[a] += groups.pop(b)
    return {frozenset(g) for g in groups}


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.35])
def test_agglomeration_merges_exactly_as_average_linkage_is_defined(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    vectors = unit_rows(rng.normal(size=(40, 8)))
    assert partition(average_linkage(vectors, threshold)) == brute_force(vectors, threshold)


def test_separated_groups_come_out_whole_whatever_their_order():
    vectors, labels = separated(np.random.default_rng(1), groups=5, per=12)
    found = average_linkage(vectors, 0.2)
    assert partition(found) == partition(labels)
    order = np.random.default_rng(2).permutation(len(vectors))
    again = average_linkage(vectors[order], 0.2)
    assert {frozenset(order[list(g)].tolist()) for g in partition(again)} == partition(labels)


def test_nothing_merges_below_the_threshold_and_labels_number_groups_by_first_member():
    vectors, _labels = separated(np.random.default_rng(3), groups=3, per=4)
    assert average_linkage(vectors, 1.01).tolist() == list(range(12))  # no pair is that similar: all alone
    found = average_linkage(vectors, 0.2)
    assert found.tolist() == [0, 1, 2] * 4  # interleaved input, groups numbered in order of first member
    assert average_linkage(vectors[:1], 0.2).tolist() == [0] and len(average_linkage(vectors[:0], 0.2)) == 0


def test_merging_a_few_at_a_time_ends_where_merging_at_once_does():
    vectors, _labels = separated(np.random.default_rng(4), groups=4, per=10)
    work = Agglomeration(vectors, np.ones(len(vectors), dtype=np.int64), 0.2)
    steps = 0
    while not work.merge(3):
        steps += 1
    assert steps == (40 - 4) // 3  # 36 merges, 3 per call, then the call that finds no pair left
    assert np.array_equal(work.labels(), average_linkage(vectors, 0.2))


def test_groups_given_as_sums_link_like_their_members():
    # A starting group is its members' sum and size: merging groups of a partition of the
    # members ends as merging the members would (the partition here does not cut a subject).
    vectors, labels = separated(np.random.default_rng(5), groups=3, per=9)
    first = np.arange(len(vectors)) % 9  # nine starting groups of three, each within one subject
    sums, sizes = group_sums(vectors, first)
    assert sizes.tolist() == [3] * 9 and np.allclose(sums[0], vectors[first == 0].sum(axis=0))
    work = Agglomeration(sums, sizes, 0.2)
    work.merge(1000)
    assert partition(work.labels()[first]) == partition(labels)


def test_cluster_groups_with_kmeans_first_above_max_groups():
    vectors, labels = separated(np.random.default_rng(6), groups=6, per=60)  # 360 vectors
    assert partition(cluster(vectors, 0.2, max_groups=48)) == partition(labels)
    assert partition(cluster(vectors, 0.2, max_groups=1000)) == partition(labels)


def test_names_are_each_topics_distinctive_words():
    texts = [
        "Ada said the sourdough starter needs flour every morning",
        "Ada said to bake the sourdough loaf at 240 degrees",
        "Ada said the flour for sourdough should be strong",
        "Ada said the pods restart when the node runs out of memory",
        "Ada said the pods of the checkout deployment crash",
        "Ada said the node pool needs one more node",
        "The weather was grey",
    ]
    cooking, cluster_ = [0, 1, 2], [3, 4, 5]
    names = name_topics([cooking, cluster_], [tokens(t) for t in texts], 3)
    # "ada" and "said" are in every topic: they name neither; shared words lead, the plural shows as used
    assert names[0][:2] == ["sourdough", "flour"] and names[1][:2] == ["node", "pods"]
    for topic, name in zip([cooking, cluster_], names, strict=True):
        own = {w for i in topic for w in tokens(texts[i])}
        assert set(name) <= own and not {"ada", "said"} & set(name)
    # one topic alone keeps its speaker's name when that is what its notes share
    assert name_topics([cooking], [tokens(t) for t in texts], 1) == [["sourdough"]]


def test_name_words_skip_function_words_and_ties_do_not_depend_on_order():
    assert tokens("The pods in the cluster: they were evicted, again!") == ["pods", "cluster", "evicted"]
    docs = [["tomato", "basil"], ["basil", "tomato"], ["kernel"], ["module"]]
    assert name_topics([[0, 1], [2, 3]], docs, 2) == [["basil", "tomato"], ["kernel", "module"]]
    assert name_topics([[3, 2], [1, 0]], docs, 2) == [["kernel", "module"], ["basil", "tomato"]]


def test_topic_pairs_below_the_least_gain_get_no_relation():
    # topics 1 and 2 share two sessions (0.2); topics 1 and 3 one (0.1); no adjacency counted
    seqs, sessions = [1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 2, 2]
    concepts = np.array([1, 2, 1, 2, 1, 3], dtype=np.int64)
    every = relation_gains(seqs, sessions, [float(s) for s in seqs], concepts, 0.1, 0.0, per_pair=4)
    assert sorted(zip(every.a.tolist(), every.b.tolist(), every.gain.round(3).tolist())) == [(1, 2, 0.2), (1, 3, 0.1)]
    kept = relation_gains(seqs, sessions, [float(s) for s in seqs], concepts, 0.1, 0.0, per_pair=4, min_gain=0.2)
    assert list(zip(kept.a.tolist(), kept.b.tolist())) == [(1, 2)]
    pairs, evidence = kept.rows(0, len(kept))
    assert pairs == [[1, 2, pytest.approx(0.2)]] and {e for _a, _b, e in evidence} == {1, 2, 3, 4}
