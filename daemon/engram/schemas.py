"""JSON Schemas of the wire protocol and the configuration, generated from the pydantic models.

``engram schemas`` writes them to ``schemas/``; a test regenerates them and fails when the
checked-in files differ, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def method_table():
    """The daemon's method table, built without starting anything."""
    from engram.config import load_settings
    from engram.runtime import Daemon

    settings = load_settings(None, state_dir=Path("/nonexistent/engram-schemas"))
    return Daemon(settings).methods


def render_schemas() -> dict[str, str]:
    from engram.bus.events import CORE_EVENTS
    from engram.config import Settings

    files: dict[str, str] = {}
    for method in method_table():
        files[f"methods/{method.name}.json"] = _dump(
            {
                "$schema": DIALECT,
                "title": method.name,
                "description": method.summary,
                "owner_only": method.owner_only,
                "params": method.params.model_json_schema(),
                "result": method.result.model_json_schema(mode="serialization"),
            }
        )
    files["events.json"] = _dump(
        {
            "$schema": DIALECT,
            "title": "engram bus events",
            "description": "Pushed to subscribers as the 'data' of an events.event notification.",
            "topics": {event.topic: event.model_json_schema(mode="serialization") for event in CORE_EVENTS},
        }
    )
    config_schema = Settings.model_json_schema()
    config_schema["$schema"] = DIALECT
    config_schema["title"] = "engram configuration (TOML file or ENGRAM_* environment)"
    files["config.json"] = _dump(config_schema)
    return dict(sorted(files.items()))
