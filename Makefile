# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint soak bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/duvo-exporter demo --config config/demo.yaml

lint: venv
	$(PY) -m ruff check exporter sinks tests bench

test: venv lint
	$(PY) -m pytest -q -m "not soak"

soak: venv
	$(PY) -m pytest -q -m soak

clean:
	rm -rf $(VENV) var .pytest_cache build *.egg-info
