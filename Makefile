# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH picks the torch requirement installed first (a CPU wheel lies on disk here);
# override it e.g. `make test TORCH=torch` on a CUDA machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-explore bench corpus clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/infogeo analyse --file infogeo/data/demo.txt --name demo --out infogeo-report/demo --summary

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# fresh random hypothesis draws (make test's are derandomised: the same cases on every run and machine)
test-explore: install
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) scripts/bench_scan.py
	$(PY) scripts/bench_layer.py
	$(PY) scripts/bench_geometry.py
	$(PY) scripts/bench_analyse.py

# the real-text corpus (Debian's python3.11-doc, split by document) under data/corpus; prints the SHA-256s
corpus: install
	$(PY) -m tiling.train.corpus --out data/corpus

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
