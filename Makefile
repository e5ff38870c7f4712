# The two commands of a fresh checkout: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  ?= ./var

.PHONY: run test install install-test schemas clean

# The stamp files make re-runs cheap: pip runs again only when pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/engramd --state-dir $(STATE)

test: install-test
	$(BIN)/python -m pytest

schemas: install
	$(BIN)/engram schemas --out schemas

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
