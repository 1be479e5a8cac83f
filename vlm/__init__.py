"""vlm-platform: train vision-language models with a workflow-orchestrated pipeline."""

__version__ = "0.1.0"
