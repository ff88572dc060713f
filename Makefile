# The two commands: `make up` runs the plant, `make test` runs the tests.
# Each sets up what it needs first: a virtualenv in .venv with the project
# and its test tools, and the Kafka broker jars from Maven Central (and QuestDB's,
# for the side-by-side benchmark and its test; a schema registry, Apicurio, for the
# registry mode's test), and as root Debian's prometheus
# package for the metrics tests, and Debian's chromium + chromium-driver for the web
# console's browser tests; the console's npm packages are rebuilt from their lockfile.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: up test setup prometheus chromium bench lint clean

up: setup
	$(BIN)/tickplant up

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

setup: $(VENV)/.installed prometheus chromium

# Debian's prometheus (server + promtool) for the metrics tests, when run as root (CI);
# quick when already there, and it leaves no service running
prometheus:
	@sh deploy/prometheus/install-debian.sh

# Debian's Chromium and chromedriver for tests/test_console.py, when run as root (CI)
chromium:
	@sh console/install-chromium-debian.sh

$(VENV)/.installed: pyproject.toml console/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/tickplant install --questdb --console --schema-registry
	touch $@

clean:
	rm -rf $(VENV) .tickplant .pytest_cache .mypy_cache
