# The two commands a newcomer types: `make demo` and `make test`. Both build .venv if missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXTRAS  ?= test

.PHONY: demo test docs bench clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m exactflow demo

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks conftest.py
	$(PY) -m pytest -n auto

# Best effort: Debian's chromium for the explorer's browser test (tests/test_explore.py skips without one).
# Installs only as root with apt-get; never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "exactflow: installing Debian's chromium for the browser test"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	    echo "exactflow: could not install chromium; the browser test will be skipped"; \
	  else echo "exactflow: no chromium (apt-get install chromium as root); the browser test will be skipped"; fi; }

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	@echo "exactflow: the site is in site/ (open site/index.html, or serve it: $(PY) -m mkdocs serve)"

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks

clean:
	rm -rf .venv runs site
