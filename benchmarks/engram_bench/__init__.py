"""engram-bench: engram's benchmarks, its ONNX conformance run and the tiny models its tests use.

Not part of the product: the ``engram`` distribution runs without it. Installed (``make bench``,
or ``make test``, which runs its smoke tests), it adds ``engram bench ...`` and
``engram models conformance`` to the CLI (:mod:`engram_bench.cli`, through entry points).

Each benchmark runs the same work through engram and through a baseline, in one run, and prints
both and their ratio:

- :mod:`~engram_bench.rpc`, :mod:`~engram_bench.frames`, :mod:`~engram_bench.startup`: the
  protocol, large frames, the CLI's start-up (``bench rpc``, ``bench frames``, ``bench cli``);
- :mod:`~engram_bench.audit`, :mod:`~engram_bench.infer`, :mod:`~engram_bench.memory`,
  :mod:`~engram_bench.policy`, :mod:`~engram_bench.providers`, :mod:`~engram_bench.route`,
  :mod:`~engram_bench.sleep`: one part each (``bench audit`` ... ``bench sleep``);
- :mod:`~engram_bench.bert`: the BERT import and in-process embedding throughput
  (``python -m engram_bench.bert``).

Shared: :mod:`~engram_bench.processes` (a fresh engramd, the baseline echo server of
:mod:`~engram_bench.echo_server`), :mod:`~engram_bench.stats` (percentiles, throughput).

:mod:`~engram_bench.conformance` runs ONNX's backend node tests through the daemon and directly
with ONNX Runtime. :mod:`~engram_bench.tiny_bert` (a random-weight BERT laid out like a real
sentence-transformers model) and :mod:`~engram_bench.toy_models` (tiny ONNX graphs with known
answers) are what the tests and benchmarks import instead of downloading a model.

The benchmarks talk to the daemon over its socket, like any client; where one prepares a state
folder before the daemon starts (``bench sleep``, ``bench audit``), it uses the parts' own store
code, not SQL of its own.
"""
