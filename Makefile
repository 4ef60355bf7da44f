# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMUX  := $(VENV)/bin/demux

.PHONY: demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on the project machines 2.13.0 is a local CPU build, and the
	# range in pyproject.toml then installs nothing more (a bare `torch` pulls CUDA wheels).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(DEMUX) separate data/demo_mix.wav --recipe audio-stft -o separated/ --overwrite
	@echo "stems written under separated/demo_mix/ (with demux.json: recipe, fit, trajectory)"
	$(DEMUX) evaluate --reference data/demo --estimate separated/ --mixture data/demo_mix.wav \
		--combine speech=pitched+tonal+percussive

test: $(VENV)/.installed
	$(PY) -m pytest

test-all: $(VENV)/.installed
	$(PY) -m pytest -m ''

bench: $(VENV)/.installed
	$(PY) -m benchmarks

# README's before/after figures: synth -> separate -> evaluate --plot per recipe (docs/make_figures.py)
.PHONY: figures
figures: $(VENV)/.installed
	$(PY) docs/make_figures.py

clean:
	rm -rf $(VENV) separated .pytest_cache
