"""Curated alignment (MiniGPT-4 stage two): generate detailed descriptions, clean, filter, fine-tune.

Heavy parts (models, training) are imported lazily by the functions that need them.
"""

from vlm.align.clean import Change, CleanResult, clean_description, is_cut_off, repetition_rate
from vlm.align.config import AlignConfig
from vlm.align.filters import apply_filters

__all__ = ["AlignConfig", "Change", "CleanResult", "clean_description", "apply_filters", "repetition_rate",
           "is_cut_off", "generate_and_curate", "finetune"]


def generate_and_curate(model_uri: str, data_uri: str, output_uri: str, cfg: AlignConfig, run_id: str | None = None,
                        **kwargs):
    """See :func:`vlm.align.stage.generate_and_curate`."""
    from vlm.align.stage import generate_and_curate as run

    return run(model_uri, data_uri, output_uri, cfg, run_id, **kwargs)


def finetune(cfg_path_or_cfg, curated_uri: str, init_from: str, output_uri: str):
    """See :func:`vlm.align.tune.finetune`."""
    from vlm.align.tune import finetune as run

    return run(cfg_path_or_cfg, curated_uri, init_from, output_uri)
