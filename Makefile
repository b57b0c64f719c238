# AgentMesh developer targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python
GOBIN := $(shell go env GOPATH 2>/dev/null)/bin
export PATH := $(GOBIN):$(PATH)
RUN_DIR ?= .run
BREAKING_AGAINST ?= .git\#branch=main

# First `make test` / `make up` on a fresh machine installs what they need
# (Python deps, redis-server, Kafka jars, Go tools) once; `make demo` installs
# only its own part (redis-server and the package with the demo extras).
SETUP_STAMP := $(RUN_DIR)/setup.stamp
DEMO_STAMP := $(RUN_DIR)/demo.stamp

.PHONY: help setup ext proto check-generated lint breaking test test-unit fuzz deploy-check up down status demo bench ghz locust

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n",$$1,$$2}'

setup: ## Install Python deps, redis-server, Kafka jars and Go tools (idempotent)
	bash .ci/install.sh
	mkdir -p $(RUN_DIR) && touch $(SETUP_STAMP)

ext: ## Build the bus's compiled per-record loops (Cython) when missing or stale
	$(PYTHON) scripts/build_ext.py

$(SETUP_STAMP): pyproject.toml .ci/install.sh deploy/local/tools.sh deploy/local/kafka/pom.xml
	bash .ci/install.sh
	mkdir -p $(RUN_DIR) && touch $@

$(DEMO_STAMP): pyproject.toml .ci/install.sh
	bash .ci/install.sh demo
	mkdir -p $(RUN_DIR) && touch $@

proto: ## Regenerate Python code, .pyi stubs, the client's typed wrappers and the Go stubs from protos/
	$(PYTHON) scripts/genproto.py
	$(PYTHON) -m agentmesh.client._codegen
	rm -rf clients/go/gen && buf generate --template buf.gen.go.yaml

check-generated: ## Fail when committed generated code is stale
	bash scripts/check_generated.sh
	$(PYTHON) -m agentmesh.client._codegen --check

lint: ## ruff, mypy and buf lint
	ruff check libs services tests perf scripts examples
	mypy libs/agentmesh
	buf lint

breaking: ## buf breaking (FILE rules) against main
	buf breaking --against '$(BREAKING_AGAINST)'

# tests/deploy runs once, inside deploy-check.
test: $(SETUP_STAMP) ext check-generated deploy-check ## Run every test against real Redis and a real Kafka broker
	AGENTMESH_REQUIRE_INFRA=1 $(PYTHON) -m pytest -q tests --ignore=tests/deploy

FUZZ_EXAMPLES ?= 3000
fuzz: $(SETUP_STAMP) ## Property-test every RPC of the five daemons with FUZZ_EXAMPLES generated requests each (real Redis and Kafka)
	AGENTMESH_REQUIRE_INFRA=1 AGENTMESH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTHON) -m pytest -q tests/integration/hardening/test_rpc_fuzz.py

deploy-check: $(SETUP_STAMP) ## helm lint + template + schema validation + chart tests + promtool
	AGENTMESH_REQUIRE_INFRA=1 PYTHON=$(PYTHON) bash deploy/check.sh

test-unit: ## Unit tests only (no servers)
	$(PYTHON) -m pytest -q tests/unit

# CLUSTER=1: Redis Cluster (3 masters + 3 replicas), three Kafka brokers and two
# replicas of every daemon (agentmesh.cli.cluster, run dir $(RUN_DIR)/cluster).
up: $(SETUP_STAMP) ## Start Redis and the five daemons in the background (TRACING=1: and Jaeger; CLUSTER=1: Redis Cluster, 3 brokers, 2 replicas of each)
ifeq ($(CLUSTER),1)
	$(PYTHON) -m agentmesh.cli.cluster up --run-dir $(RUN_DIR)/cluster $(CLUSTER_ARGS)
else ifeq ($(TRACING),1)
	bash deploy/local/jaeger.sh start $(RUN_DIR)/jaeger
	AGENTMESH_OTLP_ENDPOINT=127.0.0.1:$${JAEGER_OTLP_GRPC_PORT:-4317} $(PYTHON) -m agentmesh.cli.main up --run-dir $(RUN_DIR)
else
	$(PYTHON) -m agentmesh.cli.main up --run-dir $(RUN_DIR)
endif

down: ## Stop what `make up` started (either stack, by PID)
	$(PYTHON) -m agentmesh.cli.main down --run-dir $(RUN_DIR)
	$(PYTHON) -m agentmesh.cli.cluster down --run-dir $(RUN_DIR)/cluster
	bash deploy/local/jaeger.sh stop $(RUN_DIR)/jaeger

status: ## Show the health of the local stack
	$(PYTHON) -m agentmesh.cli.main status

demo: $(DEMO_STAMP) ## Scope 3 demo on the EPA factors, start to finish
	$(PYTHON) -m agentmesh.cli.main demo

bench: $(SETUP_STAMP) ext ## Run every perf/ benchmark 3x vs its baseline; writes perf/results/latest.{json,md}
	$(PYTHON) perf/run_all.py

ghz: $(SETUP_STAMP) ## ghz on each daemon's main RPC against the running stack; writes perf/ghz/RESULTS.md
	$(PYTHON) perf/ghz/run.py --run-dir $(RUN_DIR) $(GHZ_ARGS)

LOCUST_RUN_TIME ?= 60s
locust: $(SETUP_STAMP) ## locust (agents, callers, sagas) against the running stack for LOCUST_RUN_TIME
	$(PYTHON) perf/locust/run.py --run-dir $(RUN_DIR) --run-time $(LOCUST_RUN_TIME) --csv-prefix $(RUN_DIR)/locust/locust
