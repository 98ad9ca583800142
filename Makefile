# The two commands of the README:
#   make book   create .venv if missing, install from the lock, execute every chapter into book/, build _build/html
#   make test   install if needed; unit tests, book/source sync, site build and its checks (static HTML and
#               headless Chromium), nbval re-execution of every chapter
# and, for the site alone:
#   make site-test   tests/test_site.py + tests/test_browser.py: build the site once, check every page's HTML,
#                    load every page in headless Chromium, screenshots in _build/screenshots/<page>.png
# and, for the timings:
#   make bench       prefdyn bench all: the toy and probes benchmarks, the machine and the chapter times of the
#                    last `make book` (_build/book-times.json) in one record, _build/bench.json
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Debian's Chromium, driven by Playwright in tests/test_browser.py (never Playwright's own browsers).
CHROMIUM ?= /usr/bin/chromium

.PHONY: install chromium book site test site-test bench clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# Installs Debian's chromium when missing (apt-get, as root; output in _build/chromium-install.log). Where
# it cannot be installed, says so in one line and fails.
chromium:
	@test -x $(CHROMIUM) || { mkdir -p _build && { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } >_build/chromium-install.log 2>&1 && \
	  test -x $(CHROMIUM) && echo "installed $$($(CHROMIUM) --version 2>/dev/null)"; } || { echo "make: no \
	$(CHROMIUM), and 'apt-get install -y chromium' could not provide it (needs root and a Debian package\
	 index; log: _build/chromium-install.log): the browser test cannot run" >&2; exit 1; }

book: install
	$(VENV)/bin/prefdyn book

site: install
	$(VENV)/bin/prefdyn book --no-execute

# One pytest run: tests/ (library, pipeline, book/source sync, strict offline site build, its HTML checks
# and every page in headless Chromium) and every executed chapter in book/ re-executed by nbval and
# compared with its stored outputs (tests/sanitize.cfg).
test: install chromium
	PREFDYN_PROGRESS=0 PREFDYN_CHROMIUM=$(CHROMIUM) $(PY) -m pytest tests book --nbval --nbval-current-env \
		--nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

# The site alone: one build (the `site` fixture of tests/conftest.py), its HTML checks, every page in
# headless Chromium; full-page screenshots in _build/screenshots/<page>.png.
site-test: install chromium
	PREFDYN_CHROMIUM=$(CHROMIUM) $(PY) -m pytest tests/test_site.py tests/test_browser.py -p no:cacheprovider \
		$(PYTEST_ARGS)

# Every timing the book quotes, on this machine, in one JSON (the Performance appendix shows the committed
# one, book/data/bench.json).
bench: install
	$(VENV)/bin/prefdyn bench all --out _build/bench.json

clean:
	rm -rf _build runs
