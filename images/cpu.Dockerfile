# syntax=docker/dockerfile:1.7
# CPU image: data sharding, experts on CPU, evaluation, registration, the kfp components and the
# MLflow tracking server of charts/vlm-platform. Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t vlm-platform:cpu .      (or: make images)
# Pins: the base by exact tag (add @sha256:... in your registry mirror), torch from TORCH_VERSION,
# everything else from requirements/lock.txt (+ nodeps.txt, + images/requirements.txt).

############################ builder: a self-contained venv in /opt/venv ############################
FROM python:3.11.14-slim-bookworm AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, so that code changes do not re-install them.
COPY requirements/ requirements/
COPY images/dev-only.txt images/requirements.txt images/
RUN grep -v '^#' images/dev-only.txt | sed -e '/^$/d' -e 's/.*/^&==/' > /tmp/dev-only.re \
 && grep -v -i -f /tmp/dev-only.re requirements/lock.txt > /tmp/runtime-lock.txt \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install -r /tmp/runtime-lock.txt -r images/requirements.txt \
 && pip install --no-deps -r requirements/nodeps.txt

# The package itself, from the repository (not from an index).
COPY pyproject.toml README.md* ./
COPY vlm/ vlm/
RUN pip install --no-deps . \
 && vlm --version \
 && python -c "import torch, mlflow, kfp, psycopg2, boto3; assert not torch.cuda.is_available()"

############################ runtime ############################
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="vlm-platform (CPU)" \
      org.opencontainers.image.description="vlm CLI, kfp components and MLflow server, CPU only" \
      org.opencontainers.image.source="https://github.com/vlm-platform/vlm-platform" \
      org.opencontainers.image.licenses="Apache-2.0"

# tesseract: the OCR expert's tesseract backend; a JRE: the PTB tokenizer and METEOR in evaluation;
# tini: reaps children (kfp launchers, torchrun) and forwards signals.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng default-jre-headless tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 vlm \
 && useradd --uid 10001 --gid vlm --create-home --home-dir /home/vlm --shell /usr/sbin/nologin vlm

COPY --from=builder /opt/venv /opt/venv

# DL3064 flags the word TOKEN in TOKENIZERS_PARALLELISM (a Hugging Face switch, not a secret).
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    VLM_CACHE_DIR=/home/vlm/.cache/vlm \
    HOME=/home/vlm

USER 10001:10001
WORKDIR /home/vlm
ENTRYPOINT ["/usr/bin/tini", "--", "vlm"]
CMD ["--help"]
