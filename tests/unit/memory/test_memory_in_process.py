"""What memory offers the daemon's other parts in-process: the concepts a text names (route.ask)
and vectors kept under a key (the router's novelty and semantic cache)."""

from __future__ import annotations

import anyio
import numpy as np
from engram.memory.api import GraphUpsertParams

from tests.unit.memory.conftest import ctx


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


async def test_linked_concepts_by_whole_name_or_first_words_in_the_order_asked(make_memory) -> None:
    async with make_memory() as (memory, _):
        request = ctx()
        await memory.graph_upsert(request, GraphUpsertParams.model_validate(
            {"relations": [{"src": "Ada  Lovelace", "type": "wrote", "dst": "Notes"}]}
        ))
        await memory.graph_upsert(request, GraphUpsertParams.model_validate(
            {"relations": [{"src": "Ada Byron", "type": "married", "dst": "The Notes Society"}]}
        ))
        namespace = memory.namespaces.resolve(request.principal, request.method, None)
        asked = ["notes", "ADA lovelace", "ada", "ada  lovelace"]
        found = await anyio.to_thread.run_sync(memory.linked_concepts, namespace, asked, 10)
        # matched case and spacing aside, each once; "ada" names both Adas by their first word,
        # the shorter name first
        assert found == ["Notes", "Ada Lovelace", "Ada Byron"]
        assert memory.linked_concepts(namespace, asked, 2) == ["Notes", "Ada Lovelace"]
        assert memory.linked_concepts(namespace, ["the"], 10) == []  # function words link whole names only
        assert memory.linked_concepts(namespace, ["lovelace", "ad", "notes society"], 10) == []  # first words only
        assert memory.linked_concepts("uid:2000", asked, 10) == []  # another namespace's concepts are not these
        assert memory.linked_concepts(namespace, [], 10) == []


async def test_keyed_vectors_keep_a_key_once_and_find_the_nearest_keys(make_memory) -> None:
    async with make_memory() as (memory, _):
        vectors = memory.keyed_vectors
        assert vectors.expected_dim("router:r") is None
        assert vectors.best_similarity("router:r", unit(1, 0, 0, 0)) is None  # nothing kept yet
        assert await vectors.put("router:r", "key-a", unit(1, 0, 0, 0), "router", ["router"])
        assert not await vectors.put("router:r", "key-a", unit(1, 0, 0, 0), "router", ["router"])  # kept already
        assert await vectors.put("router:r", "key-b", unit(0, 1, 0, 0), "router", ["router"])
        assert vectors.expected_dim("router:r") == 4
        assert vectors.best_similarity("router:r", unit(1, 0.1, 0, 0)) > 0.99
        assert vectors.best_similarity("router:r", unit(1, 0, 0)) is None  # another dimension
        near = vectors.nearest("router:r", unit(1, 0.5, 0, 0), 8)
        assert [key for key, _ in near] == ["key-a", "key-b"] and near[0][1] > near[1][1]
        assert vectors.nearest("router:other", unit(1, 0, 0, 0), 8) == []
