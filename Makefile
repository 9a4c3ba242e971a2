# Two commands do everything on a fresh machine (Python 3.11, no GPU, no model hub):
#   make run    set up .venv, then run the main job on the embedded default (config.yaml)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup dryrun report study clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (pip takes a local wheel where one is configured), then the package.
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --profile profiles/local

dryrun: setup
	$(BIN)/snakemake --profile profiles/local -n

report: setup
	$(BIN)/snakemake --profile profiles/local --report results/report.html

# The embedded study (configs/embedded-study.yaml: 3 seeds, longer training, likelihood measure only), in its own
# folder study/ so that it never touches the main job's results/
study: setup
	$(BIN)/snakemake --profile profiles/local --configfile configs/embedded-study.yaml --directory study

# two workers, one test file per worker at a time (module fixtures built once): every test pins torch to one thread
# (tests/conftest.py), so two files run side by side on 2 cores; the end-to-end runs ask Snakemake for 2 cores each
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf results .snakemake
