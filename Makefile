# The two commands: `make test` and `make train-<paper>`. Every target runs `make setup` first.
#   make train-<paper> [PRESET=tiny] [NPROC=1] [MODE=...] [DATA=/path] [ARGS="--key value ..."]
#   make eval-<paper> | reproduce-<paper> | bench-<paper> [ARGS=...]
#   make export-<paper> DEST=dir       copy one paper + the shared/ layers it imports, with its own Makefile
SHELL := /bin/bash
PAPERS := tensor_parallel seqpar widenet conadv f2c skeleton_merger prin canonical_voting
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PRESET ?= tiny
NPROC ?= 1
ARGS ?=
PYTEST_ARGS ?=

# One process, or torchrun on this node when NPROC > 1 (multi-node: see README).
ifeq ($(NPROC),1)
RUN := $(PY) -m
SEP :=
else
RUN := $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m
# '--' ends torchrun's own options: without it, argparse reads --run as an abbreviation of its --run-path
SEP := --
endif
RUN_FLAGS = $(if $(MODE),--mode $(MODE)) $(if $(DATA),--data $(DATA)) $(ARGS)

.PHONY: setup test test-% train-% eval-% reproduce-% bench-% export-% bench-points clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml tools/check_system.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "setup: installing pinned requirements into $(VENV) (first time: several minutes)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, torchvision, timm, scipy, h5py, matplotlib, tqdm" \
	  || { echo "setup: the pinned requirements did not install; see the pip output above"; exit 1; }
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@bash tools/check_system.sh $(PY)
	@touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-%: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/test_$*

train-%: setup
	$(RUN) $*.train $(SEP) --preset $(PRESET) $(if $(MODEL),--model $(MODEL)) $(RUN_FLAGS)

eval-%: setup
	$(PY) -m $*.eval $(RUN_FLAGS)

reproduce-%: setup
	$(PY) -m $*.reproduce $(ARGS)

bench-%: setup
	$(PY) -m $*.bench $(ARGS)

bench-points: setup
	$(PY) -m shared.pointcloud.bench_points $(ARGS)

# Needs only the standard library, so no setup: the venv's python when there is one, else python3.
# Refuses (exit 2) a non-empty DEST that is not an earlier export of the same paper; never deletes.
export-%:
	@test -n "$(DEST)" || { echo "usage: make export-$* DEST=/path/to/dir"; exit 2; }
	@$(if $(wildcard $(PY)),$(PY),python3) -m shared.export $* "$(DEST)"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
