"""Stage two: fine-tune the stage-one model on the curated set with the training engine.

Every example is ``###Human: <Img><ImageHere></Img> <instruction> ###Assistant: <curated description>``, the
instruction drawn at random from ``align.finetune.caption_instructions`` (MiniGPT-4's description requests
unless the config lists others) plus, with ``align.train_on_prompt`` (default), the generation prompt itself:
the curated text is the corrected answer to exactly that prompt, and without it the model still loops and
stops mid-list when asked it (measured on the demo: cut-off 0.21 -> 0.18 without, -> 0.07 with, 256 held-out
images). Only the task ``caption`` is trained, as in MiniGPT-4. With
``align.replay_vqa`` > 0 a curated image that carries question-answer pairs from its source is, with that
probability, a VQA example instead: a linear adapter tuned hard on descriptions alone forgets to answer
questions (measured: VQA accuracy 0.20 -> 0.06 after 40 steps at lr 1e-3; 0.22 with 0.25 replay, but the
description gains shrink).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vlm import storage
from vlm.align.config import stage_two_train_config
from vlm.data.format import Manifest, read_manifest

if TYPE_CHECKING:
    from vlm.train.job import TrainResult

log = logging.getLogger(__name__)


def stage_two_config(cfg):
    """``cfg`` with ``align.finetune`` set for stage two (:func:`vlm.align.config.stage_two_train_config`)."""
    ft = stage_two_train_config(cfg.align)
    return cfg.model_copy(update={"align": cfg.align.model_copy(update={"finetune": ft})})


def check_curated(curated_uri: str) -> Manifest:
    """The curated set's manifest; a clear error when it is missing or holds no kept sample."""
    try:
        manifest = read_manifest(curated_uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{curated_uri} is not a curated set (no manifest.json); run `vlm align curate` first") from None
    if not manifest.num_samples:
        raise ValueError(f"the curated set {curated_uri} kept no sample ({manifest.rejected}); "
                         "relax align filters or sample more images")
    return manifest


def finetune(cfg_path_or_cfg, curated_uri: str, init_from: str, output_uri: str) -> TrainResult:
    """Fine-tune ``init_from`` (a stage-one model artefact URI) on ``curated_uri``; writes a model artefact.

    ``cfg_path_or_cfg``: a PipelineConfig or a YAML path/URI. The run goes through
    :func:`vlm.train.launch.launch` (``align.finetune.nproc`` processes, or a cluster job by ``cluster.launcher``).
    Returns the training engine's result (final metrics + artefact URI).
    """
    from vlm.config import PipelineConfig, load_config
    from vlm.train.launch import launch

    from_path = not isinstance(cfg_path_or_cfg, PipelineConfig)
    cfg = load_config(cfg_path_or_cfg) if from_path else cfg_path_or_cfg
    init_from = init_from or cfg.align.finetune.init_from
    if not init_from:
        raise ValueError("stage two starts from the stage-one model: pass init_from (a model artefact URI)")
    if not storage.exists(storage.join(init_from, "vlm_config.json")):
        raise FileNotFoundError(f"{init_from} is not a model artefact (no vlm_config.json)")
    manifest = check_curated(curated_uri)  # the job resolves the stage-two recipe (vlm.train.job.stage_config)
    log.info("stage two: %d curated samples, %d steps from %s", manifest.num_samples,
             cfg.align.finetune.steps, init_from)
    return launch(cfg, "finetune", str(curated_uri), str(output_uri), str(init_from),
                  config_uri=str(cfg_path_or_cfg) if from_path else "")
