# Two entry points for a fresh machine (see README):
#   make demo   set up, then run the smoke sweep (local Ray, local MLflow, bundled digits)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= runs

.PHONY: demo test setup ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Re-install only when the dependency list changes. pip caches downloads in ~/.cache/pip.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/raptor-study sweep search_spaces/smoke.yaml --out $(OUT) || \
	  $(BIN)/raptor-study resume search_spaces/smoke.yaml --out $(OUT)
	$(BIN)/raptor-study report smoke --runs $(OUT) --out $(OUT)/reports/smoke --log-to-mlflow
	@echo ""
	@echo "Done. Look at:"
	@echo "  report:   $(OUT)/reports/smoke/report.html"
	@echo "  trials:   $(OUT)/trials/smoke/<trial>/ (result.json, similarity.png, r2_per_layer.png)"
	@echo "  MLflow:   $(BIN)/raptor-study ui --out $(OUT)   then open http://127.0.0.1:5000"

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/raptor-study ui --out $(OUT)

clean:
	rm -rf $(OUT) .raptor_cache .pytest_cache
