# Gatehouse — two commands do all set-up: `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test dev lint bench interop clean

install: $(STAMP)

# Reinstall only when the dependency list changes; the editable install picks
# up source changes by itself.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

dev: install
	$(PY) -m gateway.devenv.run $(DEV_ARGS)

lint: install
	$(VENV)/bin/ruff check gateway protocol_spec
	$(VENV)/bin/mypy gateway protocol_spec

# Not part of `make test`: downloads @anthropic-ai/claude-code (+ its native -linux-x64 package,
# about 400 MB) into ./interop unless INTEROP_CLAUDE names an installed binary, runs the
# conformance suite against Anthropic's `claude gateway` and Gatehouse, and writes
# protocol_spec/INTEROP.md.
interop: install
	$(PY) -m protocol_spec.interop $(INTEROP_ARGS)

# Benchmarks (≤ 30 min; BENCH_QUICK=1 ≈ 5 min; BENCH_PEERS=claude-gateway=<path>,litellm for peers).
# Writes bench/results/<date>-<host>/. wrk comes from Debian (apt-get install wrk); without it
# the JSON and short-stream scenarios use the asyncio driver.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	@command -v wrk >/dev/null || echo "wrk not found (apt-get install wrk): scenarios 1-2 fall back to the asyncio driver"
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
