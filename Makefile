# The two commands of the README: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test install browser lint bench clean

demo: $(STAMP)
	$(BIN)/crumb demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Browser tests drive Debian's chromium (Playwright's own browser download does not work here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check crumb collector audiences activation tests bench

bench: $(STAMP)
	$(BIN)/python bench/collector.py

clean:
	rm -rf $(VENV) .crumb
