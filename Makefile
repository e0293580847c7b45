# Gatehouse — two commands do all set-up: `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test dev lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
