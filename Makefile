# twinnet: `make report` regenerates the results report, `make test` runs the tests,
# `make serve` starts the draw-a-digit page, `make notebook` reruns notebooks/tour.ipynb and
# saves its outputs. All create the virtual environment on first use.

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

.PHONY: report test lint bench serve notebook clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tf,serve,ray,dev]'
	touch $@

report: $(VENV)/.installed
	$(BIN)/twinnet report --out report

# pytest lists every skipped test with its reason (-rs in pyproject.toml).
test: $(VENV)/.installed
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  echo "make test: note: no Chromium found, so the browser tests of twinnet serve and watch are skipped;" \
	       "install it with: sudo apt-get install chromium"
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m pytest -q

# Runs notebooks/tour.ipynb top to bottom and saves it with its outputs (commit the result).
notebook: $(VENV)/.installed
	cd notebooks && $(abspath $(BIN))/jupyter execute --inplace --timeout=600 tour.ipynb

bench: $(VENV)/.installed
	$(BIN)/twinnet bench

serve: $(VENV)/.installed
	$(BIN)/twinnet serve

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .import_linter_cache
