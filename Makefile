# The two commands a newcomer needs: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test lint typecheck pytest validate-examples fuzz bench bench-validate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/lightspeed-collector serve $(if $(CONFIG),-c $(CONFIG))

lint: $(STAMP_DEV)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# mypy resolves imports by package name, while the sources live in core/ and plugins/; a
# throwaway tree of links gives it the installed layout (lightspeed_collector.plugins, ...).
typecheck: $(STAMP_DEV)
	rm -rf .typecheck && mkdir -p .typecheck/lightspeed_collector
	for f in core/*; do ln -s ../../$$f .typecheck/lightspeed_collector/; done
	ln -s ../../plugins .typecheck/lightspeed_collector/plugins
	ln -s ../../schemas .typecheck/lightspeed_collector/schemas
	cd .typecheck && ../$(BIN)/mypy -p lightspeed_collector --config-file ../pyproject.toml

pytest: $(STAMP_DEV)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The example records in the documentation must stay valid, checked the way a user's CI would.
validate-examples: $(STAMP_DEV)
	$(BIN)/lightspeed-collector validate docs/examples/records

test: lint typecheck validate-examples pytest

# Schemathesis against a real server, driven by /openapi.json; also part of `pytest`.
fuzz: $(STAMP_DEV)
	$(BIN)/python -m pytest tests/integration/test_fuzz.py $(PYTEST_ARGS)

bench: $(STAMP_DEV)
	$(BIN)/python bench/feedback_rps.py

bench-validate: $(STAMP_DEV)
	$(BIN)/python bench/validate.py

clean:
	rm -rf $(VENV) .typecheck build *.egg-info .pytest_cache .mypy_cache .ruff_cache
