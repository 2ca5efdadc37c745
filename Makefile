# The two commands a newcomer types: `make demo` and `make test`. Both build .venv if missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXTRAS  ?= test

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m exactflow demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks conftest.py
	$(PY) -m pytest

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	@echo "exactflow: the site is in site/ (open site/index.html, or serve it: $(PY) -m mkdocs serve)"

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks

clean:
	rm -rf .venv runs site
