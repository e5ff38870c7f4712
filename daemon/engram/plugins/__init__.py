"""Model providers as plugins: the protocol they implement and their discovery via entry points."""

from engram.plugins.locality import http_client_options, is_loopback, locality_of
from engram.plugins.protocol import (
    CAPABILITIES,
    ENTRY_POINT_GROUP,
    Completion,
    CostHint,
    Provider,
    ProviderContext,
    ProviderHealth,
)

__all__ = [
    "CAPABILITIES",
    "ENTRY_POINT_GROUP",
    "Completion",
    "CostHint",
    "Provider",
    "ProviderContext",
    "ProviderHealth",
    "http_client_options",
    "is_loopback",
    "locality_of",
]
