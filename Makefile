# hyperpi: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_PEERS := tests/interop/node

.PHONY: demo test bench deps clean image image-release image-test golden

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[device,host,test]'
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

# The SD card image (image/build.sh, as root: see README; .img.zst) and its boot test on an emulated Pi 3.
image: deps
	./image/deps.sh
	nice -n 19 ionice -c3 ./image/build.sh

# The same image packed with xz for a release (.img.xz: smaller than .img.zst, ~2 min more to make).
image-release: deps
	./image/deps.sh
	HYPERPI_COMPRESS=xz nice -n 19 ionice -c3 ./image/build.sh

image-test: image
	HYPERPI_IMAGE_TEST=1 $(PY) -m pytest -q tests/image/test_boot.py

clean:
	rm -rf $(VENV) $(NODE_PEERS)/node_modules build

# Rewrite the device's golden screen frames (tests/fixtures/frames/); look at each PNG before committing.
golden: deps
	HYPERPI_GOLDEN=regen $(PY) -m pytest -q tests/unit/test_device_frames.py

# Rewrite the test vectors (tests/fixtures/vectors.json) from the pinned Node modules;
# tests/interop/test_vectors_fresh.py fails until the committed file matches.
.PHONY: vectors
vectors: deps
	node $(NODE_PEERS)/make-vectors.js tests/fixtures/vectors.json
