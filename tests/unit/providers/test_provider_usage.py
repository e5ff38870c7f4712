"""Which settings put a provider to use: what lets an unhealthy provider degrade system.health."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engram.config import Settings
from engram.provider_usage import provider_uses


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in [key for key in os.environ if key.startswith("ENGRAM_")]:
        monkeypatch.delenv(key)


def settings(**sections) -> Settings:
    return Settings(state_dir=Path("/nonexistent/engram-usage"), **sections)


def test_chains_routes_and_provider_tables_name_the_providers_in_use():
    uses = provider_uses(
        settings(
            providers={"chains": {"generate": ["cloud", "ollama"], "chat": ["ollama"], "embed": ["onnx"]}},
            router={"routes": [
                {"name": "gen", "task": "generate", "fast": "provider:ollama", "slow": "provider:big", "mode": "cascade"},
                {"name": "digits", "task": "classify", "fast": "model:small", "slow": "model:large"},
            ]},
            plugins={"providers": {"tuned": {"url": "http://127.0.0.1:9"}}},
        )
    )
    assert uses == {
        "cloud": ["providers.chains.generate"],
        "ollama": ["providers.chains.generate", "providers.chains.chat", "router.routes.gen.fast"],
        "onnx": ["providers.chains.embed"],
        "big": ["router.routes.gen.slow"],
        "tuned": ["plugins.providers.tuned"],
    }


def test_by_default_only_the_built_in_embedder_is_in_use():
    # Installed plugins (ollama, openai) are named by nothing until configured.
    assert provider_uses(settings()) == {"onnx": ["providers.chains.embed"]}
