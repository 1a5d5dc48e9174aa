# NeuroForge-Lit: `make book` builds the executed HTML book, `make test` checks the package.
# Each target sets itself up from nothing (a .venv here), so both work on a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The book's tooling (tangler, chapter runner) lives in tools/booktools, outside the package.
BOOKTOOLS := PYTHONPATH=tools $(BIN)/python -m booktools

# The data: $NEUROFORGE_DATA_DIR if set; else ../shared/data beside the checkout, if there;
# else the loader's cache folder (and a download through torchvision on a connected machine).
ifeq ($(NEUROFORGE_DATA_DIR),)
ifneq ($(wildcard ../shared/data/mnist),)
export NEUROFORGE_DATA_DIR := $(abspath ../shared/data)
endif
endif

# QUICK=1 (make chapter CH=06 QUICK=1, make book QUICK=1): every cell and every gradient check, the
# experiments on a small budget (neuroforge_lit.quick). A quick book goes to _build/quick, apart from
# the real one, and the real build refuses any page that carries quick figures.
BOOK_OUT := .
ifneq ($(filter-out 0,$(QUICK)),)
export NEUROFORGE_QUICK := 1
BOOK_OUT := _build/quick
endif

.PHONY: setup tangle check test lint book chapter browser-test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	touch $@

tangle: setup                    ## book -> neuroforge_lit/ (the generated modules)
	$(BOOKTOOLS) tangle

check: setup                     ## fail if the committed package differs from the book
	$(BOOKTOOLS) tangle --check

lint: setup                      ## ruff (and its import order in the package), the commit messages
	$(BIN)/ruff check neuroforge_lit tests benchmarks tools book/_ext
	$(BIN)/ruff check --select I neuroforge_lit
	$(BIN)/python tools/check_commits.py

test: check lint                 ## the tangle check, lint, the test suite, and that it ran every export
	$(BIN)/python -m coverage run -m pytest
	$(BIN)/python tools/untested_exports.py

# The chapters execute first, two at a time on one thread each (booktools/execute.py), into the
# cache the Jupyter Book build reads; the build then executes only what that step left out.
book: tangle                     ## tangle, execute the chapters not yet cached, build _build/html
	$(BOOKTOOLS) execute --build-dir $(BOOK_OUT)/_build
	$(BIN)/jupyter-book build . --keep-going -W --path-output $(BOOK_OUT)

browser-test: setup               ## check the built HTML in headless Chromium (after make book)
	$(BIN)/python tools/browser_check.py

chapter: tangle                  ## execute one chapter alone: make chapter CH=03 [QUICK=1] [THREADS=2]
	@test -n "$(CH)" || { echo "usage: make chapter CH=03 (a chapter number or file stem)"; exit 2; }
	$(BOOKTOOLS) chapter $(CH) $(if $(THREADS),--threads $(THREADS))

bench: setup                     ## print and save the benchmark figures (benchmarks/results/)
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf _build
