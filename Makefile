# Gatehouse — two commands do all set-up: `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Every install comes from these locks (exact versions, sha256 hashes), never from
# pyproject.toml's ranges: a dependency's new release cannot break a fresh clone.
# requirements.lock: everything development, tests, lint and bench use;
# conf/deploy/runtime.lock: the same versions, runtime and wheel-building only (the image).
LOCK := requirements.lock
RUNTIME_LOCK := conf/deploy/runtime.lock
UV := $(VENV)/bin/uv
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet

.PHONY: install test dev lint lock fuzz bench interop image soak clean

install: $(STAMP)

# Reinstall only when the lock or the project's metadata changes; the editable
# install picks up source changes by itself. pip checks every hash and refuses a
# package the lock does not pin; the project itself goes in without resolving anything.
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve after changing dependencies in pyproject.toml. Versions already locked
# are kept where they still fit; `make lock UPGRADE=1` moves everything to the newest
# releases on purpose. The runtime lock is constrained to the full lock's versions.
lock: install
	$(UV) pip compile pyproject.toml --all-extras $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(UV) pip compile pyproject.toml --extra build $(LOCK_FLAGS) -c $(LOCK) -o $(RUNTIME_LOCK)

test: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Not part of `make test` (which runs the same at small sizes): the property tests of every
# parser under hypothesis's "large" profile (tests/conftest.py), then the HTTP fuzz run at scale,
# 100,000 seeded mutated requests by default. FUZZ_REQUESTS and FUZZ_SEED change it; the
# summary goes to bench/results/<date>-<host>-fuzz/ (FUZZ_OUT).
FUZZ_OUT ?= bench/results/$(shell date -u +%F)-$(shell hostname -s)-fuzz
fuzz: install
	HYPOTHESIS_PROFILE=large $(PY) -m pytest -q -p no:cacheprovider \
	  tests/unit/test_hostile_properties.py $(wildcard tests/unit/*/test_*_properties.py)
	GATEHOUSE_FUZZ_REQUESTS=$(or $(FUZZ_REQUESTS),100000) GATEHOUSE_FUZZ_SEED=$(or $(FUZZ_SEED),12) \
	  GATEHOUSE_FUZZ_OUT=$(FUZZ_OUT) GATEHOUSE_FUZZ_COMMAND="make fuzz$(if $(FUZZ_REQUESTS), FUZZ_REQUESTS=$(FUZZ_REQUESTS))$(if $(FUZZ_SEED), FUZZ_SEED=$(FUZZ_SEED))" \
	  $(PY) -m pytest -q -p no:cacheprovider -s tests/system/test_http_fuzz.py

# Not part of `make test` (which runs a 20 s smoke of it): three replicas behind HAProxy on one
# PostgreSQL, driven through faults (kill -9, PostgreSQL restart and outage, stalled and overloaded
# upstreams, slowloris), about 2.5 min; exits 1 on any broken invariant. Needs haproxy
# (apt-get install haproxy). Writes bench/results/<date>-<host>-soak/. SOAK_STEPS, SOAK_SCALE,
# SOAK_RATE, SOAK_OUT and SOAK_ARGS change it (python -m bench.soak --help).
soak: install
	SOAK_VIA_MAKE=1 $(PY) -m bench.soak $(SOAK_ARGS)

dev: install
	$(PY) -m gateway.devenv.run $(DEV_ARGS)

lint: install
	$(VENV)/bin/ruff check gateway protocol_spec bench
	$(VENV)/bin/mypy gateway protocol_spec bench

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
	@command -v wrk >/dev/null || echo "wrk not found (apt-get install wrk): scenarios 1-2 fall back to the asyncio driver"
	$(PY) -m bench.run

# Not part of `make test` (about 2 min here): builds the image on a Debian 12 base made
# from Debian's packages (no container registry needed), runs it as shipped against a
# throwaway PostgreSQL and the fake upstream, and checks /readyz, the HEALTHCHECK, a
# signed request and a drain (gateway/devenv/image.py). IMAGE_ARGS: --rebuild-base.
image: install
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq podman runc mmdebstrap >/dev/null; }
	$(PY) -m gateway.devenv.image $(IMAGE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
