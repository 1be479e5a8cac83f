"""Thin kfp v2 components, one per pipeline stage. Each parses its inputs, calls ``vlm.steps.<stage>`` and
turns the result into typed kfp outputs whose payload is a URI on the configured store (local or S3).

The base image is ours (``images/``; override with ``VLM_IMAGE`` / ``VLM_TRAINING_IMAGE`` at compile time);
nothing is pip-installed at run time (``install_kfp_package=False``).
"""

import os

IMAGE = os.environ.get("VLM_IMAGE", "ghcr.io/vlm-platform/vlm-platform:0.1.0-cpu")
TRAINING_IMAGE = os.environ.get("VLM_TRAINING_IMAGE", "ghcr.io/vlm-platform/vlm-platform:0.1.0-cuda")
