# U-Net Studio: `make run` starts the app, `make test` runs every test. Both set up .venv first.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test quick-test bench lint clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# The browser test drives Debian's chromium (Playwright's own browser download is not used).
/usr/bin/chromium:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make test needs /usr/bin/chromium: run 'sudo apt-get install chromium' once" >&2; exit 1; fi

run: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(VENV)/.dev-installed /usr/bin/chromium
	$(PY) -m pytest

# The tests that take a second or less each (under a minute in all): no training runs, no browser.
quick-test: $(VENV)/.dev-installed
	$(PY) -m pytest -m "not slow and not browser and not gpu"

bench: $(VENV)/.dev-installed
	$(PY) bench/inference.py
	$(PY) bench/weights.py
	$(PY) bench/augment.py

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check unet_core pages tests bench app.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
