# The two Quickstart commands: `make demo` (the main job on the bundled sample) and `make test`.
# Both create .venv on first use and install the pinned CI/dev set (requirements/ci.txt).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.normadd-installed

.PHONY: demo test lint install docs docs-serve

$(STAMP): pyproject.toml requirements/ci.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/ci.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/normadd demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks docsgen
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks docsgen
	$(PY) -m mypy src

# The documentation site (docs/, mkdocs.yml) built to site/. The tutorial pages show a recorded run of
# their commands (build/docs-tutorials/, rerun when the sources changed); `make test` runs them and
# builds the site with --strict too (tests/integration/test_docs.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve
