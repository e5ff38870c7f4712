"""Which settings put a provider to use.

A provider is in use when a fallback chain (``providers.chains.<capability>``) or a route target
(``router.routes[].fast``/``slow`` = ``provider:<name>``) names it, or when it has a
configuration table (``plugins.providers.<name>``): someone set it up on purpose. An installed
provider that nothing names is merely present: ``system.health`` reports its state without
letting it make the daemon unhealthy, so installing a plugin is not enough to degrade a daemon
that never calls it.
"""

from __future__ import annotations

from engram.config import Settings

__all__ = ["provider_uses"]


def provider_uses(settings: Settings) -> dict[str, list[str]]:
    """Provider name -> the settings that name it, in the order of the configuration."""
    uses: dict[str, list[str]] = {}
    for capability, names in settings.providers.chains.items():
        for name in names:
            uses.setdefault(name, []).append(f"providers.chains.{capability}")
    for route in settings.router.routes:
        for side in ("fast", "slow"):
            kind, _, name = getattr(route, side).partition(":")
            if kind == "provider":
                uses.setdefault(name, []).append(f"router.routes.{route.name}.{side}")
    for name in settings.plugins.providers:
        uses.setdefault(name, []).append(f"plugins.providers.{name}")
    return uses
