# vlm-platform: two commands do everything on a fresh machine.
#   make demo   install (once) and run the whole pipeline on the embedded default (configs/quickstart.yaml)
#   make test   install (once) and run the default test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export VLM_CACHE_DIR ?= $(CURDIR)/.cache/vlm
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-deps browser-deps demo align-benchmark test test-slow test-k8s test-all k8s-testenv images compile clean help

help:
	@echo "make demo       run the whole pipeline locally ($(CONFIG))"
	@echo "make test       run the default test suite"
	@echo "make test-slow  run the slow tests (demo configuration, long trainings)"
	@echo "make test-k8s   run the tests against a real kube-apiserver + etcd (builds them once: make k8s-testenv)"
	@echo "make align-benchmark  after make demo: stage one vs. stage two descriptions of held-out images"
	@echo "make images     build the container images (needs a Docker engine)"

setup: $(STAMP)

# Re-installs only when the pins or the package metadata change; otherwise a no-op.
$(STAMP): pyproject.toml requirements/lock.txt requirements/nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/nodeps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Optional system packages (Debian/Ubuntu, as root): tesseract for the OCR expert's tesseract backend
# (the default OCR backend, rapidocr, needs none) and Java for PTB tokenization / METEOR in evaluation.
system-deps:
	apt-get update -qq && apt-get install -y -qq tesseract-ocr default-jre-headless

# Headless Chromium (Debian's package, as root) for the MLflow UI browser test (tests/e2e/test_mlflow_ui.py);
# Playwright drives it and never downloads a browser of its own.
browser-deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

demo: setup
	$(BIN)/vlm run --config $(CONFIG)

# Stage two's effect (after `make demo`): the newest demo run's stage-one and stage-two models describe 64
# held-out scenes (generated with another seed than the demo's data); prints repetition and cut-off rates.
DEMO_RUN = $(lastword $(sort $(wildcard runs/quickstart/runs/*/)))
align-benchmark: setup
	@test -n "$(DEMO_RUN)" || { echo "no demo run under runs/quickstart/runs: run make demo first"; exit 1; }
	@test -e "$(DEMO_RUN)finetune/model/vlm_config.json" || { echo "$(DEMO_RUN) has no stage-two model (align skipped?)"; exit 1; }
	$(BIN)/vlm shard builtin:shapes runs/heldout-shapes --builtin-size 256 --builtin-image-size 128 --seed 1 --split 0,0,1 >/dev/null
	$(BIN)/python benchmarks/align_quality.py --before $(DEMO_RUN)pretrain/model --after $(DEMO_RUN)finetune/model \
		--data runs/heldout-shapes --num-images 256 --max-new-tokens 80 --output runs/align-quality.json
	$(BIN)/python benchmarks/align_quality.py --before $(DEMO_RUN)pretrain/model --after $(DEMO_RUN)finetune/model \
		--data runs/heldout-shapes --num-images 128 --max-new-tokens 80 --instruction "Describe this image in detail." \
		--output runs/align-quality-request.json

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The Kubernetes tests' control plane: $KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl, e.g. from
# `setup-envtest use -p path`) when set; otherwise built offline from Debian's kubernetes source package,
# once per machine, into ~/.cache/vlm-platform/k8s-testenv/ (~8 min on 2 idle cores, ~2 GB of scratch disk).
k8s-testenv:
	@if [ -n "$$KUBEBUILDER_ASSETS" ]; then echo "k8s test binaries: KUBEBUILDER_ASSETS=$$KUBEBUILDER_ASSETS"; \
	else bash tests/k8s/build-testenv.sh; fi

test-k8s: setup k8s-testenv
	$(BIN)/python -m pytest -m k8s $(PYTEST_ARGS)

test-all: setup k8s-testenv
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

compile: setup
	$(BIN)/vlm compile --output pipeline.yaml

images:
	docker build -f images/cpu.Dockerfile -t vlm-platform:cpu .
	docker build -f images/cuda.Dockerfile -t vlm-platform:cuda .

clean:
	rm -rf local_outputs .pytest_cache build *.egg-info
