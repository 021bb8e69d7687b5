# `make run` and `make test` are all a fresh machine with Python 3.11+ needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast lint format setup browser migrate clean compose-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `make run` installs what the service needs; `make test` adds the test tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

setup: $(DEV_STAMP) browser

# The dashboard's browser test drives Debian's Chromium. As root with apt, install it when missing;
# elsewhere the test says it is skipped (and fails under CI=true).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the dashboard test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium not installed: the dashboard browser test will be skipped"; fi; \
	fi

migrate: $(STAMP)
	$(BIN)/trainyard migrate

run: $(STAMP)
	$(BIN)/trainyard run

# The suite in two runs: the unit and in-process tests spread over UNIT_WORKERS processes
# (pytest-xdist, each file whole in one: half the time on 2 cores), then the end-to-end tests in
# TEST_WORKERS (default 0: this process alone), since tests that wait on real services under a
# deadline fail more often beside others (TEST_WORKERS=2 is about a third faster, less steady).
# PYTEST_ARGS goes to both runs (a -m in it replaces theirs); one it leaves without a test (pytest's
# exit status 5) passes, both so do not.
UNIT_WORKERS ?= 2
TEST_WORKERS ?= 0
test: setup lint
	@unit=0; e2e=0; \
	$(BIN)/python -m pytest -n $(UNIT_WORKERS) --dist loadfile -m "not e2e and not compose" $(PYTEST_ARGS) || unit=$$?; \
	if [ $$unit != 0 ] && [ $$unit != 5 ]; then exit $$unit; fi; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "e2e or compose" $(PYTEST_ARGS) || e2e=$$?; \
	if [ $$e2e != 0 ] && [ $$e2e != 5 ]; then exit $$e2e; fi; \
	if [ $$unit = 5 ] && [ $$e2e = 5 ]; then echo "make test: no test was selected"; exit 5; fi

# ruff, configured in pyproject.toml: the lint rules and the one format (`make format` applies it).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# While working: the unit and in-process tests, no server process (no e2e stack, PostgreSQL or
# Redis) and none of the seconds-long training checks; under a minute.
test-fast: lint
	$(BIN)/python -m pytest -m "not e2e and not compose and not postgres and not slow" $(PYTEST_ARGS)

# docker-compose.yml and the Dockerfile, run for real on a private Docker engine (root; installs
# docker.io and debootstrap when missing; no registry needed). COMPOSE_CHECK_CACHE=DIR keeps images.
compose-check:
	$(PYTHON) deploy/compose_check.py

clean:
	rm -rf $(VENV) var .pytest_cache
