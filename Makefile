# Every target installs what it needs into .venv first, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install demo test lint typecheck check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pyradiomics 3.0.1 builds from source against the numpy it will run with (its 3.1.0 sdist is broken)
	$(PY) -m pip install -q "numpy==2.3.5" setuptools wheel versioneer
	$(PY) -m pip install -q --no-build-isolation "pyradiomics==3.0.1"
	$(PY) -m pip install -q -e ".[dev,deploy]"
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: a synthetic study through the whole node, SR back to a receiving PACS.
demo: $(STAMP)
	$(VENV)/bin/ainode demo --work $(DEMO)

# the venv's bin/ goes first on PATH so tests find the tools pip installs there (dcmqi's itkimage2segimage)
test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check node tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_train.py
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/bench_end_to_end.py
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/bench_ingest.py || true  # exits 1 while its target is missed

clean:
	rm -rf $(VENV) $(DEMO) .mypy_cache .ruff_cache .pytest_cache
