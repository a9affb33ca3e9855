# The two commands a person needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.crossgraph-installed
TORCH := torch==2.13.0
JOBS ?= 2

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/crossgraph check crossgraph.models.gpt2:tiny
	$(VENV)/bin/crossgraph quantize crossgraph.models.gpt2:tiny --scheme dynamic
	$(VENV)/bin/crossgraph check crossgraph.models.gpt2:tiny_parallel --mesh data=2,model=2

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile -q

# Not part of CI: several minutes of GPT-2 small on every target; writes bench/results/ and the README table.
bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
