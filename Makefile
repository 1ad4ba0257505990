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
	@mkdir -p out
	$(BIN)/python -c "import cv2, skimage.data; cv2.imwrite('out/astronaut.jpg', skimage.data.astronaut()[:, :, ::-1])"
	$(BIN)/ferkit predict out/astronaut.jpg --save out/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out
