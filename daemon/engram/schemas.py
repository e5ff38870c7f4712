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


def unstarted_daemon():
    """A daemon built but not started: its method table and declared events, no I/O."""
    from engram.config import load_settings
    from engram.runtime import Daemon

    return Daemon(load_settings(None, state_dir=Path("/nonexistent/engram-schemas")))


def render_schemas() -> dict[str, str]:
    from engram.config import Settings
    from engram.policy.model import PolicyFile
    from engram.server.params import RequestMeta

    daemon = unstarted_daemon()
    files: dict[str, str] = {}
    for method in daemon.methods:
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
            "topics": {
                event.topic: event.model_json_schema(mode="serialization") for event in daemon.bus.event_types
            },
        }
    )
    meta_schema = RequestMeta.model_json_schema()
    meta_schema["$schema"] = DIALECT
    meta_schema["description"] = (
        "params._meta of any request (params given by name): what the request tells the daemon about itself, "
        "for every method alike; it is not a parameter of the method."
    )
    files["request-meta.json"] = _dump(meta_schema)
    policy_schema = PolicyFile.model_json_schema()
    policy_schema["$schema"] = DIALECT
    policy_schema["title"] = "engram policy file (TOML)"
    files["policy.json"] = _dump(policy_schema)
    config_schema = Settings.model_json_schema()
    config_schema["$schema"] = DIALECT
    config_schema["title"] = "engram configuration (TOML file or ENGRAM_* environment)"
    files["config.json"] = _dump(config_schema)
    return dict(sorted(files.items()))
