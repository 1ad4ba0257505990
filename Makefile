# Everything runs inside .venv. `make demo` installs inference only (ferkit and its core dependencies: NumPy, OpenCV,
# ONNX Runtime; no PyTorch), which is all the demo needs. `make setup` (and every target that needs it: test, lint)
# installs everything: PyTorch first, CPU-only, the version the project is tested with (TORCH); on a machine whose
# package index serves CUDA builds, also pass the CPU wheel index,
# e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Stamps: which install .venv holds (a file each, so that the light one never passes for the full one).
INFERENCE := $(VENV)/.installed-inference
FULL := $(VENV)/.installed-full

.PHONY: setup demo test test-fast test-floor lint clean

# scikit-image only for the demo's photo (its astronaut).
$(INFERENCE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . 'scikit-image>=0.22'
	@touch $@

$(FULL): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	$(BIN)/pip install -q -e '.[train,serve,dev]'
	@touch $@ $(INFERENCE)

setup: $(FULL)

# out/demo is the demo's own: emptied first, as ferkit never replaces a file it finds there.
demo: $(INFERENCE)
	@rm -rf out/demo && mkdir -p out
	$(BIN)/python -c "import cv2, skimage.data; cv2.imwrite('out/astronaut.jpg', skimage.data.astronaut()[:, :, ::-1])"
	$(BIN)/ferkit predict out/astronaut.jpg --save out/demo

# The whole suite: what CI (.ci/run) runs; it names its 15 slowest tests, to keep CI under 20 minutes.
test: setup
	$(BIN)/python -m pytest -q --durations=15

# Day-to-day: everything but the tests marked slow (real datasets, training runs, installs, the browser).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The oldest dependencies pyproject.toml allows, all together (tests/constraints-floor.txt), in their own venv.
test-floor:
	$(PY) -m venv build/venv-floor
	build/venv-floor/bin/pip install -q -c tests/constraints-floor.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[train,serve]' pytest httpx
	build/venv-floor/bin/python -m pytest -q -m "not slow" tests/test_training.py tests/test_train_cli.py tests/test_evaluation.py tests/test_evaluation_metrics.py tests/test_data_tools.py

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) build/venv-floor out
