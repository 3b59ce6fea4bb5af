# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8600

.PHONY: install demo test bench bench-registry clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/modelhall up --demo --host $(HOST) --port $(PORT)

test: $(INSTALLED)
	$(BIN)/python -m pytest

bench: bench-registry

bench-registry: $(INSTALLED)
	@command -v docker-registry >/dev/null || (echo "bench-registry compares against Debian's docker-registry: apt-get install docker-registry" && exit 1)
	$(BIN)/python bench/registry_throughput.py

clean:
	rm -rf $(VENV) .modelhall .bench *.egg-info
