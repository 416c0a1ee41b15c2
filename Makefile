# The local stack and the project's commands. `make up` and `make test` are all the set-up there is.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: help venv up down status logs run test lint fmt clean lock check-tools browser chaos bench fuzz faults toxiproxy cdc registry compose-test

help:  ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

check-tools:
	@command -v java >/dev/null || { echo "error: java not found. Install Java 17+ (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found. Install Maven (Debian/Ubuntu: apt-get install maven)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $(PYTHON) is older than 3.11; set PYTHON=python3.11" >&2; exit 1; }

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install -q uv==$(UV_VERSION)
	$(UV) pip install -q --python $(PY) -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)  ## Create or update the virtualenv from the locks

up: check-tools $(STAMP)  ## Start Kafka, MongoDB-wire server, PostgreSQL, Airflow; WORKERS=N: Celery, Redis, N workers
	$(PY) -m devstack up

run: $(STAMP)  ## Trigger kafka_to_mongo once, wait, and report it (CONF='{"count": 1000}')
	$(PY) -m devstack run --conf '$(or $(CONF),{})'

down:  ## Stop what `make up` started, every worker included (data stays)
	@if [ -x $(PY) ]; then $(PY) -m devstack down; else echo "nothing to stop (no virtualenv)"; fi

status:  ## Say which services (and Celery workers) run, which crashed and where their logs are
	@$(PY) -m devstack status

logs:  ## Show the end of every service log (LINES=40)
	@$(PY) -m devstack logs --lines $(or $(LINES),40)

test: check-tools $(STAMP) toxiproxy  ## Run all tests (starts its own broker and server on free ports)
	$(PY) -m pytest $(PYTEST_ARGS)

chaos: check-tools $(STAMP)  ## SIGKILL the tasks at each kill point, retry, check the _id set (TRIALS=20 SEED=)
	$(PY) -m chaos --trials $(or $(TRIALS),20) $(if $(SEED),--seed $(SEED)) --results .artifacts/chaos/results.json

faults: check-tools $(STAMP) toxiproxy  ## Network faults through Toxiproxy, retries, the exact _id set (TRIALS=5 SEED=)
	$(PY) -m faults --trials $(or $(TRIALS),5) $(if $(SEED),--seed $(SEED)) --results .artifacts/faults/results.json

cdc: check-tools $(STAMP)  ## A table mirrored through Debezium: PostgreSQL -> Connect -> Kafka -> drain -> MongoDB, printed side by side
	PYTHONPATH=plugins $(PY) -m devstack.cdc_demo

registry: check-tools $(STAMP)  ## Build (cached) and start the Schema Registry (Apicurio, Confluent API) on REGISTRY_PORT=8081
	$(PY) -m devstack.registry start

toxiproxy: $(STAMP)  ## Build the Toxiproxy server from source (go install) into .cache/, for the fault tests
	$(PY) -m devstack.toxiproxy install

bench: check-tools $(STAMP)  ## Benchmarks on their own broker, server and Airflow (N=20000 REPS=3 AIRFLOW=1 TUTORIAL_CAP=60 SECTIONS= CONTENDERS=)
	$(PY) -m bench --n $(or $(N),20000) --airflow $(or $(AIRFLOW),1) $(if $(REPS),--reps $(REPS)) $(if $(TUTORIAL_CAP),--tutorial-cap $(TUTORIAL_CAP)) $(if $(SECTIONS),--sections $(SECTIONS)) $(if $(CONTENDERS),--contenders $(CONTENDERS))

fuzz: $(STAMP)  ## The record path's property tests with many more generated records (EXAMPLES=50000)
	RECORD_PATH_PROFILE=fuzz FUZZ_EXAMPLES=$(or $(EXAMPLES),50000) $(PY) -m pytest \
		tests/unit/test_record_path_properties.py -q -o timeout=0 --hypothesis-show-statistics

compose-test: check-tools $(STAMP)  ## Build the images here and run docker-compose.yaml end to end (root; not in make test)
	PYTHONPATH=plugins $(PY) -m devstack.compose_test

lint: $(STAMP)  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)  ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:  ## Stop the stack and delete its state (.state: Kafka data, MongoDB data, Airflow home)
	@if [ -x $(PY) ]; then $(PY) -m devstack clean; else rm -rf .state; fi

lock: $(STAMP)  ## Re-resolve requirements*.txt from requirements*.in
	$(UV) pip compile requirements.in --python-version 3.11 --no-header -o requirements.txt
	$(UV) pip compile requirements-dev.in --python-version 3.11 --prerelease=allow --no-header -o requirements-dev.txt

browser:  ## Install Debian's chromium for the browser tests (needs root; never downloads a browser build)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
