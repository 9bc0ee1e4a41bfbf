# The targets people and CI both run. `make demo` and `make test` work on a fresh machine: each creates the
# virtual environment on first use. torch is installed on its own first, pinned: a loose torch requirement pulls
# a CUDA build of several GB, and `torch==2.13.0` takes the CPU wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.installed
DEV := $(VENV)/.installed-dev

.PHONY: install demo test check bench clean

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $(BASE)

$(DEV): $(BASE)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(DEV)

install: $(BASE)

demo: $(BASE)
	$(BIN)/specialize run

test: $(DEV)
	$(BIN)/python -m pytest -q

check: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

bench: $(DEV)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/train_throughput.py --processes 2
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/serve_throughput.py
	$(BIN)/python benchmarks/onpolicy_throughput.py

clean:
	rm -rf $(VENV) runs
