# Quick start:  make demo   (set up, then run the demo)
#               make test   (set up, then run the test suite)
# The CPU wheel of torch is installed first: a plain `torch` requirement would
# otherwise pull several GB of CUDA packages. Override TORCH for a GPU build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint bench clean

$(BIN)/mlff-calc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $@

setup: $(BIN)/mlff-calc

demo: setup
	$(BIN)/mlff-calc demo

test: setup
	$(BIN)/python -m pytest -q

# lint (ruff check and format check) and the import contracts of pyproject.toml, with the
# import graph (imports inside functions included) checked for cycles
lint: setup
	$(BIN)/ruff check mlff_calc tests benchmarks examples
	$(BIN)/ruff format --check mlff_calc tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layout.py

clean:
	rm -rf $(VENV) mlff_results
