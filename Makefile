# Two commands on a fresh machine: `make demo`, then `make test`.
# TORCH_SPEC: the torch to install (default: 2.13.0, CPU wheels where the index has them; a bare `torch`
# may pull the CUDA build, several GB).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.detloss-installed

.PHONY: install demo test lint docs fuzz bench clean integration integration-install clean-integration

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,eval,assign,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/detloss demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# `make docs`: the documentation site (Sphinx: autodoc and napoleon read the docstrings' roles,
# math and Args:/Shape: sections as they are written; myst-parser for the Markdown guides; furo)
# into site/, strict: a warning, a broken link or an unresolved reference is an error. Offline.
docs: install
	rm -rf site
	$(BIN)/python -m sphinx -b html -W --keep-going -n -q -j 2 docs site
	@echo "documentation: $(CURDIR)/site/index.html"

test: lint docs
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs build site *.egg-info src/*.egg-info

# `make integration`: tests/integration against the real ultralytics, mmengine and torchvision, in
# a venv of its own (torch 2.14.1 + torchvision 0.29.1, ~6 GB). It lives outside the clone, named
# by a hash of its requirements, so clones and runs reuse it until requirements/integration.txt or
# pyproject.toml change (then it is rebuilt and the older one removed). detloss is installed in it
# editable; when that install points at another clone, it is redone for this one.
INT_REQUIREMENTS := requirements/integration.txt
INT_CACHE ?= $(HOME)/.cache/detloss
INT_KEY := $(shell cat $(INT_REQUIREMENTS) pyproject.toml | sha256sum | cut -c1-16)
INT_VENV ?= $(INT_CACHE)/venv-integration-$(INT_KEY)
INT_BIN := $(INT_VENV)/bin
INT_STAMP := $(INT_VENV)/.detloss-installed
INT_IS_THIS_CLONE := import importlib.util as u, os, sys; s = u.find_spec("detloss"); \
	sys.exit(not (s and os.path.realpath(s.origin).startswith(os.path.realpath("src") + os.sep)))

$(INT_STAMP):
	rm -rf $(INT_CACHE)/venv-integration-*
	$(PYTHON) -m venv $(INT_VENV)
	$(INT_BIN)/python -m pip install --quiet --upgrade pip
	$(INT_BIN)/python -m pip install --quiet -r $(INT_REQUIREMENTS) -e ".[dev,eval]"
	touch $(INT_STAMP)

integration-install: $(INT_STAMP)
	@$(INT_BIN)/python -c '$(INT_IS_THIS_CLONE)' || $(INT_BIN)/python -m pip install --quiet --no-deps -e .

integration: integration-install
	TORCH_EXTENSIONS_DIR=$(INT_VENV)/torch_extensions \
		$(INT_BIN)/python -m pytest -q -n 2 --dist loadfile tests/integration src/detloss/integrations

clean-integration:
	rm -rf $(INT_VENV)
