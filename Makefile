# twinnet: `make report` regenerates the results report, `make test` runs the tests,
# `make serve` starts the draw-a-digit page. All create the virtual environment on first use.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# A development and CI convenience, not a user path: the project's checkouts keep MNIST in
# ../shared/mnist, used when present. Where twinnet itself looks: docs/usage.md.
ifeq ($(origin TWINNET_DATA), undefined)
  ifneq ($(wildcard ../shared/mnist/train-images-idx3-ubyte*),)
    TWINNET_DATA := $(abspath ../shared/mnist)
  endif
endif
export TWINNET_DATA

.PHONY: report test lint bench serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tf,serve,ray,dev]'
	touch $@

report: $(VENV)/.installed
	$(BIN)/twinnet report --out report

test: $(VENV)/.installed
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/twinnet bench

serve: $(VENV)/.installed
	$(BIN)/twinnet serve

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .import_linter_cache
