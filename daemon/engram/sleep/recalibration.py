"""Recalibration: the router's fast (online) weights are folded into its slow weights, from the
outcomes it recorded (``Router.consolidate``). Runs once per run, not per namespace."""

from __future__ import annotations

from typing import Any, ClassVar

from engram.sleep.stage import StageContext

__all__ = ["RecalibrationStage"]


class RecalibrationStage:
    name: ClassVar[str] = "recalibration"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        router = ctx.router
        if router is None or getattr(router, "state", "running") != "running" or getattr(router, "assessor", None) is None:
            return {"routes": [], "skipped": "no router"}
        await ctx.step()
        routes = await router.consolidate()
        return {"routes": list(routes)}

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        return {}  # consolidated weights are the router's own learning; replay does not judge them
