# flywheel — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv

.PHONY: demo demo-rollback test test-unit test-integration lint typecheck lock bench clean install install-dev install-serve

# The replay's length and drift (`make demo DEMO_DAYS=90` for a quicker look)
DEMO_DAYS  ?= 365
DEMO_DRIFT ?= ticket_churn@120

demo: install            ## install (pinned), run the spine, then a year of the flywheel turning
	$(BIN)/flywheel run
	$(BIN)/flywheel replay --days $(DEMO_DAYS) --drift $(DEMO_DRIFT)

# The second scenario: a retrained challenger that is worse (the source leaks the label into
# its ticket columns) passes the gates on the source's own holdout and is rolled back live.
# Its own folder and world; docs/continuous-training.md#a-worse-challenger-rolled-back-make-demo-rollback
demo-rollback: install   ## in ./demo-rollback: the spine, then 60 days in which a leaky retrain is rolled back
	rm -rf demo-rollback && mkdir demo-rollback
	printf 'retrain:\n  window: 30d\n' > demo-rollback/flywheel.yaml
	cd demo-rollback && $(abspath $(BIN))/flywheel run
	cd demo-rollback && $(abspath $(BIN))/flywheel replay --days 60 --drift ticket_churn@0 --drift cancellation_tickets@0

test: install-dev        ## install (pinned, dev), lint + type-check, run the whole test suite
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	PYTHON=$(BIN)/python MYPY=$(BIN)/mypy scripts/test.sh

test-unit: install-dev
	$(BIN)/python -m pytest -m "not integration"

test-integration: install-dev
	$(BIN)/python -m pytest -m integration

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (this machine), every process
# would otherwise compile every imported module from source (seconds per `flywheel` command).
$(VENV)/.main: requirements/main.lock pyproject.toml | $(UV)
	$(UV) pip install -q --compile-bytecode -p $(BIN)/python -r requirements/main.lock
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	touch $@

$(VENV)/.dev: requirements/dev.lock pyproject.toml | $(UV)
	$(UV) pip install -q --compile-bytecode -p $(BIN)/python -r requirements/dev.lock
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	touch $@ $(VENV)/.main

install: $(VENV)/.main
install-dev: $(VENV)/.dev

# The serving-only install (what the serve image carries): `make install-serve VENV=.venv-serve`
$(VENV)/.serve: requirements/serve.lock pyproject.toml | $(UV)
	$(UV) pip install -q --compile-bytecode -p $(BIN)/python -r requirements/serve.lock
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	touch $@
install-serve: $(VENV)/.serve

lock: | $(UV)            ## re-resolve the pinned lock files from pyproject.toml (keeps pins)
	$(UV) pip compile -q pyproject.toml --extra all --extra s3 -p 3.11 --generate-hashes -o requirements/main.lock
	$(UV) pip compile -q pyproject.toml --extra serve -p 3.11 --generate-hashes -o requirements/serve.lock
	$(UV) pip compile -q pyproject.toml --extra dev -p 3.11 -o requirements/dev.lock

bench: install-dev
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.train_register

clean:
	rm -rf $(VENV) .flywheel build dist
