# Two commands on a fresh machine: `make demo`, then `make test`.
# TORCH_SPEC: here `torch==2.13.0` takes the CPU build on disk; any other spec may pull CUDA.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.detloss-installed

.PHONY: install demo test lint fuzz bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,eval,assign]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/detloss demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
