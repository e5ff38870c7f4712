"""One episode per normalised text in a namespace: remember answers the existing id with
duplicate true and counts an access; batches, concurrent writers, archiving and rows written
before deduplication existed."""

from __future__ import annotations

import time

import anyio
import numpy as np
from engram.memory.api import GetParams, ImportParams, RememberParams, StatsParams
from engram.memory.store import NewEpisode
from engram.memory.textkey import normalise, text_key

from tests.unit.memory.conftest import ctx


def remember(*texts: str, **extra) -> RememberParams:
    return RememberParams.model_validate({"items": [{"text": t} for t in texts], **extra})


def test_normalisation_folds_case_width_and_spacing_only() -> None:
    assert normalise("  Ada\u00a0LIVES\tin\n\nＰａｒｉｓ. ") == "ada lives in paris."
    assert text_key("Straße") == text_key("STRASSE") == text_key("strasse")
    assert text_key("Ada lives in Paris.") != text_key("Ada lives in Paris!")  # punctuation still counts
    assert text_key("café") == text_key("cafe\u0301")  # NFKC composes the accent
    assert text_key("café") != text_key("cafe")  # accents are not dropped


async def test_the_same_text_is_one_episode_and_a_repeat_is_an_access(make_memory) -> None:
    async with make_memory() as (memory, events):
        first = await memory.remember(ctx(), remember("Ada lives in Paris."))
        assert first.duplicates == [False]
        again = await memory.remember(ctx(), remember("ada   LIVES in paris.", "Something else entirely."))
        assert again.ids[0] == first.ids[0] and again.duplicates == [True, False]
        await anyio.to_thread.run_sync(memory.episodic.flush_access)
        got = (await memory.get(ctx(), GetParams(ids=[first.ids[0]]))).episodes[0]
        assert got.access_count == 1 and got.last_access is not None
        assert (await memory.stats(ctx(), StatsParams())).episodes == 2
        remembered = [e for e in events.events if e.topic == "memory.remembered"]
        assert [len(e.ids) for e in remembered] == [1, 1]  # the repeat is no new episode: no event names it
        other = await memory.remember(ctx(uid=2000), remember("Ada lives in Paris."))  # another namespace: its own
        assert other.duplicates == [False] and other.ids[0] != first.ids[0]


async def test_duplicates_within_one_batch_are_one_episode(make_memory) -> None:
    async with make_memory() as (memory, _):
        result = await memory.remember(ctx(), remember("Buy milk", "buy  MILK", "Buy bread", "Buy milk"))
        assert result.ids[0] == result.ids[1] == result.ids[3] != result.ids[2]
        assert result.duplicates == [False, True, False, True]
        assert (await memory.stats(ctx(), StatsParams())).episodes == 2
        assert memory.index.count("uid:1000") == 2  # the vector index holds each episode once


async def test_concurrent_remembers_of_one_text_make_one_episode(make_memory) -> None:
    async with make_memory() as (memory, _):
        results: list = []

        async def one() -> None:
            results.append(await memory.remember(ctx(), remember("The meeting moved to Tuesday.")))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
        assert len({r.ids[0] for r in results}) == 1
        assert sorted(r.duplicates[0] for r in results) == [False] + [True] * 7
        assert (await memory.stats(ctx(), StatsParams())).episodes == 1


async def test_import_of_a_held_text_names_the_existing_episode(make_memory) -> None:
    async with make_memory() as (memory, _):
        held = (await memory.remember(ctx(), remember("Ada lives in Paris."))).ids[0]
        result = await memory.import_(ctx(), ImportParams.model_validate({"items": [{"text": "ADA lives in Paris."}, {"text": "New."}]}))
        assert result.imported == 1 and result.skipped == 1 and result.ids[0] == held


async def test_archived_episodes_give_their_text_up_and_take_it_back(make_memory) -> None:
    async with make_memory() as (memory, _):
        old = (await memory.remember(ctx(), remember("Call the plumber."))).ids[0]
        seq = memory.episodic.store.resolve("uid:1000", [old])[old]
        when = time.time()
        await anyio.to_thread.run_sync(lambda: memory.episodic.archive_seqs("uid:1000", [seq], when))
        fresh = await memory.remember(ctx(), remember("Call the plumber."))
        assert fresh.duplicates == [False] and fresh.ids[0] != old
        await anyio.to_thread.run_sync(lambda: memory.episodic.unarchive_seqs("uid:1000", [seq], when))
        # The text is the new episode's now; the restored one keeps none (a duplicate for sleep's merge).
        assert (await memory.remember(ctx(), remember("call the plumber."))).ids[0] == fresh.ids[0]
        with memory.db.read() as conn:
            keys = dict(conn.execute("SELECT id, text_key IS NOT NULL FROM memory_episodes").fetchall())
        assert keys == {old: 0, fresh.ids[0]: 1}


async def test_rows_from_before_deduplication_are_keyed_at_start(make_memory) -> None:
    async with make_memory() as (memory, _):
        vector = np.ones(32, np.float32) / np.sqrt(32)
        rows = [NewEpisode(id=f"ep_0000000000000000000000000{n}", namespace="uid:1000", text=text, text_sha256="x", kind="note",
                           time=1.0, vector=vector, embedder="client") for n, text in enumerate(["Old note", "old  note", "Other"])]
        with memory.db.transaction() as conn:  # as migration 0004 leaves them: no text_key
            memory.episodic.store.insert(conn, rows, 1.0)
    async with make_memory() as (memory, _):  # the restart keys them, the first of each text wins
        with memory.db.read() as conn:
            keys = dict(conn.execute("SELECT id, text_key IS NOT NULL FROM memory_episodes").fetchall())
        assert keys == {rows[0].id: 1, rows[1].id: 0, rows[2].id: 1}
        again = await memory.remember(ctx(), remember("OLD NOTE"))
        assert again.ids == [rows[0].id] and again.duplicates == [True]
