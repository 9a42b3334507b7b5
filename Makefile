# One place for the commands the README promises.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(shell find src -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" -o -name "*.h")

.PHONY: demo game test bench lint clean

demo: $(STAMP)
	$(PY) examples/trading_demo.py

game: $(STAMP)
	$(PY) examples/game_demo.py --compare

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples tools

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf build $(VENV) src/*.egg-info
	find src -name '*.so' -delete
	find src -name '*.c' -path '*coreallocs*' -delete
