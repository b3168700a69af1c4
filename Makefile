# Two commands on a fresh machine: `make run` (the pipeline on the default experiment) and
# `make test` (the whole suite). Both install first, from requirements.lock.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run params test lint format lock clean team-server bench-install bench bench-smoke bench-lock

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $@

# The DVC pipeline (dvc.yaml: train -> evaluate -> report) on the default experiment, recorded in
# MLflow (mlflow.db). Its stages call `python`, so the venv goes first on PATH.
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m trpo_pipeline.stages.summary

# Rewrite params.yaml from conf/ after changing conf/ (tests/test_pipeline_dvc.py checks it).
params: install
	$(BIN)/trpo-params

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The team's tracking server, tools/mlflow-team-server.sh: MLflow's basic-auth app on this
# machine only (put a TLS reverse proxy in front for others: docs/security.md). Its secrets and
# settings come from the environment, never a file here: MLFLOW_AUTH_ADMIN_PASSWORD and
# MLFLOW_FLASK_SERVER_SECRET_KEY (required), TEAM_STORE (a PostgreSQL database; default SQLite in
# team-server/), TEAM_DIR, TEAM_ARTIFACTS, TEAM_PORT, TEAM_WORKERS (the script says each).
team-server: install
	MLFLOW=$(abspath $(BIN))/mlflow tools/mlflow-team-server.sh

# Re-pin every dependency after changing pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lock-venv

# The benchmark against sb3-contrib's TRPO (docs/benchmarks.md) has its own environment, so
# sb3-contrib and rl_zoo3 never reach the product or its tests. Pinned by requirements.lock (the
# product's pins) plus requirements-bench.lock (everything, the bench extra included).
# Another selection: `make bench BENCH_ARGS="--envs halfcheetah"` (1M steps, 3 seeds, ~37 min).
BENCH_VENV ?= .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?= --envs cartpole pendulum --seeds 3
BENCH_SMOKE_ARGS ?= --envs cartpole pendulum --seeds 1 --budget-scale 0.05

bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml requirements.lock requirements-bench.lock
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements.lock -c requirements-bench.lock -e ".[bench]"
	$(BENCH_BIN)/python -c "import torch; print('bench env: torch', torch.__version__)"
	touch $@

bench: bench-install
	$(BENCH_BIN)/python benchmarks/bench.py $(BENCH_ARGS)

bench-smoke: bench-install
	$(BENCH_BIN)/python benchmarks/bench.py $(BENCH_SMOKE_ARGS)

# Re-pin the benchmark environment after changing the bench extra or requirements.lock (or the
# package's own dependencies: the lock has them too, envpool for env.vectorization=envpool
# included, so the check below fails on a freeze that lost them).
bench-lock:
	rm -rf .lock-venv-bench && $(PYTHON) -m venv .lock-venv-bench
	.lock-venv-bench/bin/python -m pip install --quiet -c requirements.lock -e ".[bench]"
	{ echo "# make bench-lock: pip freeze of the benchmark environment (.venv-bench)"; \
	  .lock-venv-bench/bin/python -m pip freeze --exclude-editable | grep -v '^-e'; \
	} > requirements-bench.lock.tmp
	grep -q '^envpool==' requirements-bench.lock.tmp || \
	  { echo "bench-lock: envpool is missing from the freeze (pyproject pins envpool==1.2.5)"; exit 1; }
	mv requirements-bench.lock.tmp requirements-bench.lock
	rm -rf .lock-venv-bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
