"""Local model inference with ONNX Runtime, without PyTorch.

The daemon's part:

- :mod:`engram.inference.service`: :class:`~engram.inference.service.Inference`, the part (start,
  health, the ``models.*`` and ``infer.*`` RPC methods); params and results in
  :mod:`engram.inference.api`, events in :mod:`engram.inference.events`, settings in
  :mod:`engram.inference.settings`.
- :mod:`engram.inference.registry`: ``<state>/models/<name>/`` folders; :mod:`~engram.inference.manifest`
  (hashes, task, inputs/outputs, Ed25519 signature) and :mod:`~engram.inference.onnx_info` (what a
  graph declares).
- :mod:`engram.inference.sessions`: ONNX Runtime sessions (options, providers, optimized-graph cache)
  and their LRU cache; :mod:`~engram.inference.batching`: dynamic batching.
- :mod:`engram.inference.validate`: requests checked against a model's inputs (tensors travel as
  :mod:`engram.wire.tensors` says); :mod:`~engram.inference.arrays`: models for in-process callers
  that hold numpy arrays (the router's model targets).
- :mod:`engram.inference.quantize`: the int8 variant; :mod:`~engram.inference.cli`: ``engram models``.

Text models:

- :mod:`engram.inference.bert_onnx`: BERT sentence-transformers checkpoint → self-contained ONNX
  graph (embeddings, encoder, mean pooling and L2 normalisation all inside).
- :mod:`engram.inference.text_encoder`: ``tokenizer.json`` → padded int64 input arrays, batched
  by length.
- :mod:`engram.inference.embedder`: runs the graph over texts in-process.
- :mod:`engram.inference.check_package`: the pin check ``make`` runs.

The ONNX conformance run (``engram models conformance``), ``engram bench infer`` and the tiny
models that tests and benchmarks write to disk are in engram-bench (``benchmarks/``).

Nothing is imported here so that ``import engram.inference`` stays cheap; import the modules.
"""
