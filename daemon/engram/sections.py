"""What every part's settings section is made of: a strict model, and the common field types.

Each part keeps its own section (``engram/<part>/settings.py``); the composition root's
:class:`engram.config.Settings` puts them together under their keys.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PositiveSeconds", "Section"]

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]


class Section(BaseModel):
    """A settings section: unknown keys are errors, and defaults are validated like the rest."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
