"""Evaluation: COCO caption metrics, VQAv2 accuracy, retrieval recall, perplexity; the runner and its report.

    from vlm.eval import evaluate, EvalConfig
    result = evaluate("runs/x/model", "runs/x/data", EvalConfig(tasks=["caption", "vqa"]))  # an EvalResult
"""

from vlm.eval.config import EvalConfig

__all__ = ["EvalConfig", "evaluate", "caption_metrics", "vqa_accuracy", "retrieval_recall", "perplexity"]


def __getattr__(name: str):  # lazy: the config must stay importable without torch/mlflow
    if name == "evaluate":
        from vlm.eval.runner import evaluate

        return evaluate
    if name in {"caption_metrics", "vqa_accuracy", "retrieval_recall", "perplexity"}:
        from vlm.eval import metrics

        return getattr(metrics, name)
    raise AttributeError(name)
