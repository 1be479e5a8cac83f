# syntax=docker/dockerfile:1.7
# CUDA training image: torch with CUDA 13.0 (the PyPI build of torch 2.13.0) and its NCCL, DeepSpeed
# with FusedAdam/FusedLamb/CPUAdam compiled ahead of time (no JIT compile, no nvcc at run time), and
# the vlm package. Runs PyTorchJob workers and GPU experts. Build from the repository root:
#   docker build -f images/cuda.Dockerfile -t vlm-platform:cuda .      (or: make images)
# The CUDA toolkit of the builder must match torch's CUDA major version (checked below).

############################ builder: toolkit + compilers, a venv in /opt/venv ############################
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04 AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# GPU architectures the DeepSpeed kernels are compiled for (Ampere, Ada, Hopper, Blackwell + PTX).
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ARG MAX_JOBS=8
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-dev python3.12-venv build-essential git \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv
WORKDIR /src

COPY requirements/ requirements/
COPY images/dev-only.txt images/requirements.txt images/
# Everything from the lock file except the dev-only tools and DeepSpeed, which is built below.
RUN grep -v '^#' images/dev-only.txt | sed -e '/^$/d' -e 's/.*/^&==/' > /tmp/dev-only.re \
 && echo '^deepspeed==' >> /tmp/dev-only.re \
 && grep -v -i -f /tmp/dev-only.re requirements/lock.txt > /tmp/runtime-lock.txt \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert torch.version.cuda.split('.')[0] == '13', torch.version.cuda" \
 && pip install -r /tmp/runtime-lock.txt -r images/requirements.txt \
 && pip install --no-deps -r requirements/nodeps.txt

# DeepSpeed ops ahead of time: DS_BUILD_OPS=0 builds none by default, the DS_BUILD_<OP>=1 ones are built.
ENV DS_BUILD_OPS=0 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_FUSED_LAMB=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1
RUN DEEPSPEED_VERSION="$(grep -i '^deepspeed==' requirements/lock.txt | cut -d= -f3)" \
 && test -n "${DEEPSPEED_VERSION}" \
 && pip install --no-build-isolation --no-deps "deepspeed==${DEEPSPEED_VERSION}" \
 && python -c "from deepspeed.git_version_info import installed_ops as o; \
missing = [k for k in ('fused_adam', 'fused_lamb', 'cpu_adam') if not o.get(k)]; \
assert not missing, f'DeepSpeed ops not prebuilt: {missing}'"

COPY pyproject.toml README.md* ./
COPY vlm/ vlm/
RUN pip install --no-deps . && vlm --version

############################ runtime: CUDA runtime libraries only ############################
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS runtime

LABEL org.opencontainers.image.title="vlm-platform (CUDA)" \
      org.opencontainers.image.description="vlm training image: torch + CUDA 13.0 + NCCL, DeepSpeed ops prebuilt" \
      org.opencontainers.image.source="https://github.com/vlm-platform/vlm-platform" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 tesseract-ocr tesseract-ocr-eng tini \
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
    NCCL_DEBUG=WARN \
    VLM_CACHE_DIR=/home/vlm/.cache/vlm \
    TORCH_EXTENSIONS_DIR=/home/vlm/.cache/torch_extensions \
    HOME=/home/vlm

USER 10001:10001
WORKDIR /home/vlm
ENTRYPOINT ["/usr/bin/tini", "--", "vlm"]
CMD ["--help"]
