# hyperpi: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_PEERS := tests/interop/node

.PHONY: demo test bench deps clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(NODE_PEERS)/node_modules/.installed: $(NODE_PEERS)/package-lock.json
	cd $(NODE_PEERS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(VENV)/.installed $(NODE_PEERS)/node_modules/.installed
	./tests/system-deps.sh

demo: deps
	$(PY) -m hyperpi.demo

test: deps
	$(PY) -m pytest -q

bench: deps
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) $(NODE_PEERS)/node_modules build
