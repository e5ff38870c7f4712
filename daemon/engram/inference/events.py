"""Events of the inference part: models added, removed, loaded and unloaded.

Topics start with ``model.`` so that the audit log, which records that family, sees every change
to what the daemon can run.
"""

from __future__ import annotations

from pydantic import Field

from engram.bus.events import Event

__all__ = ["MODEL_EVENTS", "ModelAdded", "ModelLoaded", "ModelRemoved", "ModelUnloaded"]


class ModelAdded(Event):
    topic = "model.added"
    name: str
    task: str
    sha256: str = Field(description="SHA-256 of the model's ONNX file.")
    size_bytes: int
    source: str = Field(description="add, import or quantize.")
    replaced: bool = Field(default=False, description="Whether a model of that name was overwritten.")
    uid: int | None = Field(default=None, description="Who asked for it (None: the daemon itself, at start).")


class ModelRemoved(Event):
    topic = "model.removed"
    name: str
    sha256: str
    uid: int | None = None


class ModelLoaded(Event):
    topic = "model.loaded"
    name: str
    provider: str = Field(description="The execution provider the session actually uses.")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Providers of inference.providers (the CPU aside) the session runs without; models.info says why.",
    )
    seconds: float
    optimized_cache: str = Field(description="hit (optimization skipped), stored (saved for next time) or off.")
    signature: str = Field(description="unsigned, trusted or untrusted.")


class ModelUnloaded(Event):
    topic = "model.unloaded"
    name: str
    reason: str = Field(description="request, idle, max_items, max_bytes, replaced, removed or shutdown.")


MODEL_EVENTS: tuple[type[Event], ...] = (ModelAdded, ModelRemoved, ModelLoaded, ModelUnloaded)
