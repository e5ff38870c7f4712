"""Spreading activation over the concept graph.

Seeds (the concepts nearest to a query, activated by their similarity) pass activation along
relations: a neighbour receives ``activation x relation weight x decay`` and keeps the strongest
it receives (max, not sum, so that a hub with many weak links does not outshine a strong direct
association and every activation stays in 0..1). Relations are followed in both directions: an
association is symmetric even when the fact it states is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["spread"]

Edge = tuple[int, int, float]  # (concept, concept, weight)


def spread(
    seeds: dict[int, float],
    edges_of: Callable[[set[int]], Iterable[Edge]],
    depth: int,
    decay: float,
    floor: float = 1e-3,
) -> dict[int, float]:
    """Activation of every concept reached from ``seeds`` within ``depth`` hops.

    ``edges_of(frontier)`` returns the relations touching any concept of ``frontier``.
    Activation below ``floor`` stops spreading.
    """
    activation = {c: max(0.0, min(1.0, a)) for c, a in seeds.items() if a > 0}
    frontier = {c for c, a in activation.items() if a >= floor}
    for _ in range(depth):
        if not frontier:
            break
        changed: set[int] = set()
        before = dict(activation)  # one hop per round: what a round passes on is what it started with
        for a, b, weight in edges_of(frontier):
            for here, there in ((a, b), (b, a)):
                if here not in frontier:
                    continue
                passed = before[here] * weight * decay
                if passed >= floor and passed > activation.get(there, 0.0):
                    activation[there] = passed
                    changed.add(there)
        frontier = changed
    return activation
