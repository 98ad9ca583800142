# The two commands of the README:
#   make book   create .venv if missing, install from the lock, execute every chapter into book/, build _build/html
#   make test   install if needed; unit tests, book/source sync, site build, nbval re-execution of every chapter
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install book site test clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

book: install
	$(VENV)/bin/prefdyn book

site: install
	$(VENV)/bin/prefdyn book --no-execute

# One pytest run: tests/ (library, pipeline, book/source sync, strict offline site build) and every
# executed chapter in book/ re-executed by nbval and compared with its stored outputs (tests/sanitize.cfg).
test: install
	PREFDYN_PROGRESS=0 $(PY) -m pytest tests book --nbval --nbval-current-env \
		--nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf _build runs
