"""Knowledge extraction: the entities and relations of remembered text, in memory's graph.

``local`` parses with spaCy's small English pipeline (``model``: found in its package, checked
against a pinned digest); ``queue`` is the episodes past a watermark; ``worker`` is the background
task that reads them, extracts and writes through memory's ``GraphStore``. See docs/memory.md,
"Knowledge extraction".
"""

from __future__ import annotations

from engram.memory.extraction.local import Entity, Extraction, LocalExtractor, Triple

__all__ = ["Entity", "Extraction", "LocalExtractor", "Triple", "load_local_extractor"]


def load_local_extractor(resolve_pronouns: bool = True) -> LocalExtractor:
    """The local extractor with its pipeline loaded (blocking, about a second of CPU)."""
    from engram.memory.extraction.model import load_pipeline  # noqa: PLC0415 - spaCy only where it runs

    return LocalExtractor(load_pipeline(), resolve_pronouns=resolve_pronouns)
