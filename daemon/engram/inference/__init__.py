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
- :mod:`engram.inference.codec`: tensors on the wire; :mod:`~engram.inference.validate`: requests
  checked against a model's inputs.
- :mod:`engram.inference.quantize`: the int8 variant; :mod:`~engram.inference.conformance`: ONNX's
  backend node tests through the daemon; :mod:`~engram.inference.bench`: ``engram bench infer``;
  :mod:`~engram.inference.cli`: ``engram models``.

Text models:

- :mod:`engram.inference.bert_onnx`: BERT sentence-transformers checkpoint → self-contained ONNX
  graph (embeddings, encoder, mean pooling and L2 normalisation all inside).
- :mod:`engram.inference.text_encoder`: ``tokenizer.json`` → padded int64 input arrays, batched
  by length.
- :mod:`engram.inference.embedder`: runs the graph over texts in-process.
- :mod:`engram.inference.tiny_bert` and :mod:`~engram.inference.toy_models`: tiny models on disk
  for tests and benchmarks; :mod:`~engram.inference.check_package`: the pin check ``make`` runs.

Nothing is imported here so that ``import engram.inference`` stays cheap; import the modules.
"""
