# Two commands do all set-up on a fresh machine:
#   make demo   -> builds .venv, trains and samples the quick variant of every recipe
#   make test   -> builds .venv, runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench clean

$(BIN)/.installed: pyproject.toml constraints.txt .ci/setup.sh
	PY=$(PY) VENV=$(VENV) bash .ci/setup.sh
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/diffsuite tour --out runs/tour --overwrite

test: setup
	$(BIN)/python -m pytest -q --timeout 900

test-slow: setup
	$(BIN)/python -m pytest -q -m slow --timeout 3600

bench: setup
	$(BIN)/python benchmarks/samplers.py && $(BIN)/python benchmarks/trainer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
