# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint soak bench bench-venv clean container-test

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/duvo-exporter demo

lint: venv
	$(PY) -m ruff check exporter sinks transport tests bench container

test: venv lint
	$(PY) -m pytest -q -m "not soak"

# Minutes, not in CI: 25 kill -9s of the daemon, thousands of property-test schedules, and the
# soak tests (steady load with faults; memory flat, backlog back to zero).
soak: venv
	DUVO_CRASH_KILLS=25 $(PY) -m pytest -q -s tests/test_e2e_daemon.py::test_kill_9_at_random_moments_while_a_sink_flaps_loses_nothing
	DUVO_PROPERTY_EXAMPLES=3000 $(PY) -m pytest -q tests/test_extraction_properties.py
	$(PY) -m pytest -q -m soak

# Builds the Dockerfile with podman (installing podman, runc, debootstrap and hadolint first if
# needed, and a local python:3.11-slim from Debian packages if missing) and runs `once` against
# the simulator inside it. Needs root. See container/container-test.sh; about 5 minutes on a
# fresh machine, 1 once the base image exists.
container-test: venv
	PY=$(PY) bash container/container-test.sh

# Benchmarks write docs/benchmarks.md and docs/*.png (minutes; not part of `make test`).
bench-venv: venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'

bench: bench-venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) var .pytest_cache build *.egg-info
