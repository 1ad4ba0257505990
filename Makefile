# Everything runs inside .venv; `make setup` creates it. CPU-only PyTorch is pinned in pyproject.toml.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

$(BIN)/ferkit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,serve,dev]'
	@touch $@

setup: $(BIN)/ferkit

demo: setup
	$(BIN)/ferkit data info ../shared/datasets/fer2013.zip --out out/info

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out
