# One place for the commands the README promises.
#   make demo   set everything up (.venv with the package and its extras) and run the trading demo
#   make test   build the wheel, install it into a fresh venv, lint, run the suite from outside
#               the source tree (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_VENV ?= build/test-venv
WHEELS ?= build/wheels
SOURCES := pyproject.toml setup.py $(shell find src -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" -o -name "*.h" -o -name "*.py")
REPO := $(CURDIR)

.PHONY: demo game test check wheel lint bench dev clean

demo: $(STAMP)
	$(PY) examples/trading_demo.py

game: $(STAMP)
	$(PY) examples/game_demo.py --compare

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# a non-editable install of the package, its extras and the benchmark peers
$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet ".[fast,zmq,test,lint,bench]"
	touch $(STAMP)

# editable install for working on the code (the tests still run against `make test`'s wheel)
dev:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"

wheel:
	rm -rf $(WHEELS)
	$(PYTHON) tools/prune_build.py
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir $(WHEELS) .

test: wheel
	rm -rf $(TEST_VENV)
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install --quiet "$$(ls $(WHEELS)/coreallocs-*.whl)[test,lint]"
	$(MAKE) --no-print-directory lint VENV=$(TEST_VENV)
	cd "$$(mktemp -d)" && COREALLOCS_REQUIRE_TEST_EXTRAS=1 \
		$(REPO)/$(TEST_VENV)/bin/python -m pytest -q \
		-c $(REPO)/pyproject.toml --rootdir $(REPO) $(REPO)/tests

# quick loop while working: rebuild the wheel, reinstall it into the existing test venv and
# run the tests named by T (default: all), still from outside the source tree
T ?= tests
check: wheel
	test -x $(TEST_VENV)/bin/python || ($(PYTHON) -m venv $(TEST_VENV) && \
		$(TEST_VENV)/bin/python -m pip install --quiet "$$(ls $(WHEELS)/coreallocs-*.whl)[test,lint]")
	$(TEST_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(WHEELS)/coreallocs-*.whl
	cd "$$(mktemp -d)" && $(REPO)/$(TEST_VENV)/bin/python -m pytest -q -x \
		-c $(REPO)/pyproject.toml --rootdir $(REPO) $(addprefix $(REPO)/,$(T))

lint:
	$(VENV)/bin/ruff check src tests benchmarks examples tools
	$(VENV)/bin/mypy

clean:
	rm -rf build dist $(VENV) src/*.egg-info
	find src -name '*.so' -delete
	find src -name '*.c' -delete
