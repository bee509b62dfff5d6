# One virtual environment per checkout; every target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the integration tests use: a real Prometheus server and promtool, and the
# Fashion-MNIST files the examples run on (nothing downloads at test time).
APT_PACKAGES := prometheus dataset-fashion-mnist

.PHONY: install quickstart test test-unit proto system-deps clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/codistill run configs/quickstart.yaml --compare independent

system-deps:
	@if ! command -v promtool >/dev/null 2>&1 || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

test: install system-deps
	$(BIN)/python -m pytest -ra

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

proto: install
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) runs .pytest_cache
