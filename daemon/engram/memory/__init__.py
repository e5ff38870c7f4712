"""Memory tiers: working (RAM), episodic (SQLite + FTS5 + FAISS) and semantic (a bi-temporal graph).

- :mod:`engram.memory.service`: the ``Memory`` part and its ``memory.*`` RPC methods.
- :mod:`engram.memory.episodic`: remember, recall, get, forget, import, export; the group-commit writer.
- :mod:`engram.memory.store`: the SQLite tables of episodes (blocking; called from worker threads).
- :mod:`engram.memory.index`: the per-namespace FAISS index, persisted with a watermark.
- :mod:`engram.memory.semantic` and :mod:`engram.memory.activation`: concepts, relations, spreading activation.
- :mod:`engram.memory.working`: per-session working memory with composite eviction.
- :mod:`engram.memory.embedding`: the ``Embedder`` protocol the part is given.

Nothing is imported here so that ``import engram.memory`` stays cheap; import the modules.
"""
