"""The published contract stays true: schemas are fresh, and every method, setting and public
name is documented."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

import engram
from engram.config import Settings
from engram.schemas import render_schemas, unstarted_daemon

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_schemas_are_fresh():
    files = render_schemas()
    schemas = REPO / "schemas"
    stale = [name for name, text in files.items() if not (schemas / name).is_file() or (schemas / name).read_text() != text]
    extra = [str(p.relative_to(schemas)) for p in schemas.rglob("*.json") if str(p.relative_to(schemas)) not in files]
    assert not stale and not extra, f"run `make schemas`: stale {stale}, no longer generated {extra}"


def _docs() -> str:
    paths = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n".join(p.read_text() for p in paths if p.exists())


def test_every_rpc_method_is_documented():
    docs = _docs()
    missing = [m.name for m in unstarted_daemon().methods if f"`{m.name}`" not in docs]
    assert not missing, f"undocumented RPC methods: {missing}"


def _setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _setting_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_setting_is_documented():
    docs = _docs()
    missing = [key for key in _setting_keys(Settings) if f"`{key}`" not in docs]
    assert not missing, f"undocumented settings: {missing}"


def test_every_event_topic_is_documented():
    docs = _docs()
    missing = [topic for topic in unstarted_daemon().bus.topics if f"`{topic}`" not in docs]
    assert not missing, f"undocumented event topics: {missing}"


def test_public_python_api_is_documented():
    docs = _docs()
    missing = [name for name in engram.__all__ if name != "__version__" and not re.search(rf"\b{name}\b", docs)]
    assert not missing, f"undocumented public names: {missing}"


def test_checked_in_sdk_is_fresh():
    from engram.sdkgen import render_sdk

    client = REPO / "daemon" / "engram" / "client"
    stale = [name for name, text in render_sdk().items() if not (client / name).is_file() or (client / name).read_text() != text]
    assert not stale, f"run `make schemas`: the typed SDK is stale: {stale}"


def test_sdk_covers_every_method_and_its_models_build():
    """Every method but the subscriptions has a typed call, and every generated model resolves its
    annotations (a name the generator forgot to emit would fail here, not at a user's first call)."""
    import inspect

    from pydantic import BaseModel

    from engram.client import Client, sdk_models
    from engram.sdkgen import UNTYPED

    client = Client("/nonexistent/engram.sock")
    missing = []
    for method in unstarted_daemon().methods:
        if method.name in UNTYPED:
            continue
        *path, leaf = method.name.split(".")
        target: object = client
        for part in path:
            target = getattr(target, part, None)
        if not callable(getattr(target, leaf if leaf != "import" else "import_", None)):
            missing.append(method.name)
    assert not missing, f"methods without a typed call: {missing}"
    models = [c for _, c in inspect.getmembers(sdk_models, inspect.isclass) if issubclass(c, BaseModel) and c.__module__ == sdk_models.__name__]
    assert len(models) > len(unstarted_daemon().methods)
    for model in models:
        assert model.model_rebuild(force=True) is True, model
