# One Makefile: install, test, lint, demo. `make test` installs first if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-cluster screenshots lint docs demo bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not cluster"

# the dashboard's screenshots in docs/img, taken by its browser tests (needs chromium)
screenshots: $(STAMP)
	AIOTQ_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_dashboard_browser.py

# Redis Cluster, Sentinel and a three-node RabbitMQ cluster, each started by its test
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m cluster

lint: $(STAMP)
	$(BIN)/ruff check aiotq tests examples benchmarks
	$(BIN)/ruff format --check aiotq tests examples benchmarks
	$(BIN)/python -m mypy aiotq
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d $$(mktemp -d)

# the docs site (MkDocs Material, API reference from the docstrings by mkdocstrings) in site/
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo: $(STAMP)
	$(BIN)/python -m examples.demo

# aiotq against Celery, arq, taskiq and saq on the local Redis (db 14, flushed) and RabbitMQ
# (vhost aiotq-bench, recreated); peers are installed into .venv-bench/<name> on first use
# (they pin conflicting redis versions)
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.compare

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.compare --quick

clean:
	rm -rf $(VENV) .venv-bench *.egg-info .pytest_cache site
