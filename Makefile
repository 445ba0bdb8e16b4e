# bslrun: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install chromium run test test-full bench flow-toys uci-wine-red uci report lint format docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install bslrun with its test tools

run: $(STAMP)  ## train the embedded default (BNN on white wine); ARGS="key=value ..." adds overrides
	$(BIN)/bslrun $(ARGS)

# Two workers: JAX compiles on one core, so two test processes keep a 2-core machine busy.
# loadscope keeps each module's tests (and their shared fixtures) in one worker.
# The tests share one compilation cache in the checkout: a clean clone starts it empty and
# its later tests load what the earlier ones compiled (docs/speed.md).
# --durations: the slowest tests are listed at the end, to keep the suite inside its budget.
PYTEST := BSLRUN_COMPILATION_CACHE=$(CURDIR)/.cache/jax $(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=30

test: $(STAMP) chromium  ## the test suite without the long statistical checks (under 10 minutes)
	$(PYTEST) -m "not slow"

test-full: $(STAMP) chromium  ## every test, the slow statistical ones included
	$(PYTEST)

# The report's HTML is checked in headless Chromium, a Debian package (apt-get as root,
# else through sudo).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

bench: $(STAMP)  ## throughput benchmarks; writes benchmarks/results/*.json
	$(BIN)/python -m benchmarks.run

FLOW_TOYS := flow_toys_benchmark/8gaussians,flow_toys_benchmark/checkerboard,flow_toys_benchmark/rings
flow-toys: $(STAMP)  ## the flow benchmark on 8gaussians, checkerboard and rings (test.kl_to_true)
	$(BIN)/bslrun -m experiment=$(FLOW_TOYS) $(ARGS) \
	  'hydra.sweep.dir=$${oc.env:BSLRUN_OUTPUT_DIR,experiments}/flow_toys_benchmark/multirun/$${now:%Y-%m-%d_%H-%M-%S_%f}' 

# Each run of the benchmark gets its own timestamped sweep folder; the table is written there.
UCI_RUNS := $${BSLRUN_OUTPUT_DIR:-experiments}/uci_wine_red/multirun
uci-wine-red: $(STAMP)  ## UCI red wine, 20 splits, then the table beside the published results
	@dir=$(UCI_RUNS)/$$(date +%Y-%m-%d_%H-%M-%S_%6N); set -x; \
	$(BIN)/bslrun -m sweep=uci_splits experiment=uci_wine_red $(ARGS) "hydra.sweep.dir=$$dir"; \
	status=$$?; \
	$(BIN)/bslrun-report "$$dir" --published uci_wine_red && exit $$status

# The whole UCI regression benchmark: each data set's splits (20; 5 for protein) under the
# shared protocol (configs/experiment/uci/protocol.yaml), for each method of UCI_METHODS,
# every method's splits trained as one program (the vectorised launcher); then one table
# beside the published numbers. Its split files are read from $BSLRUN_UCI_DIR (default
# ../shared/data/uci_regression). UCI_SETS and UCI_METHODS narrow it.
UCI_SETS    ?= boston concrete energy kin8nm naval power protein wine_red yacht
UCI_METHODS ?= lowrank,ensemble,mc_dropout
uci: $(STAMP)  ## the UCI regression benchmark (9 data sets x UCI_METHODS), then the table beside the published results
	@dir=$${BSLRUN_OUTPUT_DIR:-experiments}/uci/$$(date +%Y-%m-%d_%H-%M-%S_%6N); status=0; \
	for d in $(UCI_SETS); do \
	  ( set -x; $(BIN)/bslrun -m hydra/launcher=vectorised experiment=uci/$$d \
	    model.posterior=$(UCI_METHODS) trainer.progress=false $(ARGS) "hydra.sweep.dir=$$dir/$$d" ) \
	    || status=$$?; \
	done; \
	$(BIN)/bslrun-report "$$dir" --published uci && exit $$status

report: $(STAMP)  ## summarise run folders: DIR=experiments/<name> (default: experiments)
	$(BIN)/bslrun-report $(or $(DIR),experiments) $(ARGS)

# Pinned: a new ruff release must not fail CI on unchanged code.
RUFF := ruff==0.17.6
LINTED := src tests benchmarks docs/hooks

lint: $(STAMP)  ## ruff: lint (with import order and a complexity limit) and format check
	$(BIN)/pip install --quiet '$(RUFF)'
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(STAMP)  ## ruff: sort imports, fix what can be fixed, format
	$(BIN)/pip install --quiet '$(RUFF)'
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# The docs extra (MkDocs, Material theme) goes into the same .venv, on demand.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# --strict: a warning (broken link or anchor, page missing from nav) fails the build.
# The reference hook imports bslrun.config; no bytecode is written into the checkout.
# NO_MKDOCS_2_WARNING silences Material's banner about its own end of life (not a docs problem).
docs: $(DOCS_STAMP)  ## build the documentation site into site/ (mkdocs, warnings are errors)
	PYTHONDONTWRITEBYTECODE=1 NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:  ## remove .venv, caches, site/ and run folders (experiments/README.md stays)
	rm -rf $(VENV) .pytest_cache .cache benchmarks/results site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find experiments -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
