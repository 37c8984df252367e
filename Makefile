# Two commands are the contract (README): `make demo` and `make test`. Each creates .venv when it is
# missing, installs torch first (TORCH, a CPU build by default) and then this project (editable, dev
# extra), and re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "raddiag needs Python >= 3.11 (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(VENV)/bin/raddiag demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check platform tests bench scripts

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf .raddiag .pytest_cache .hypothesis
