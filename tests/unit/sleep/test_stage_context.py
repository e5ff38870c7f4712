"""What the stage context gives a stage: units of work that make way for requests."""

from __future__ import annotations

from pathlib import Path

from engram.memory.api import RememberParams
from engram.sleep.settings import SleepSettings

from tests.unit.memory.conftest import ctx as rpc_ctx
from tests.unit.sleep.memory_env import memory_env


async def test_a_unit_whose_transaction_gave_way_runs_again_after_the_request(tmp_path: Path) -> None:
    class Request:
        """Comes in during the unit's first attempt, after its transaction began; then is served."""

        def __init__(self) -> None:
            self.answers = [False, True]  # asked when the transaction begins, then before its first statement
            self.steps = 0

        async def step(self) -> None:
            self.steps += 1

        def busy(self) -> bool:
            return self.answers.pop(0) if self.answers else False

    request = Request()
    async with memory_env(tmp_path, 1_000_000.0, with_audit=False) as env:
        await env.memory.remember(rpc_ctx(), RememberParams.model_validate({"items": [{"text": "x", "vector": [1, 0]}]}))
        ctx = env.ctx(SleepSettings(), stage="importance", pacer=request)
        [(seq,)] = env.sql("SELECT seq FROM memory_episodes")
        await ctx.thread(ctx.store.set_saliences, ctx.tag, [(0.5, seq, None)], {"after": seq}, ctx.preempted)
        assert request.steps == 1  # waited once, for the request
        assert env.sql("SELECT salience FROM memory_episodes") == [(0.5,)]
        assert env.sql("SELECT kind, ref FROM memory_changes") == [("salience", str(seq))]  # journalled once
        assert ctx.store.checkpoints(1) == {(ctx.namespace, "importance"): {"after": seq}}
