"""Config of the curated alignment stage (MiniGPT-4 stage two)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlm.configbase import Section
from vlm.train.config import TrainConfig

#: The stage-one prompt of MiniGPT-4's curation step.
DESCRIBE_INSTRUCTION = "Describe this image in detail. Give as many details as possible. Say everything you see."
#: Appended (after the first answer) when the answer is shorter than ``min_answer_tokens``.
CONTINUE_PROMPT = "###Human: Continue ###Assistant: "
#: MiniGPT-4's instruction to the rewriting LLM (ChatGPT in the paper, a local instruct LLM here).
REWRITE_INSTRUCTION = (
    "Fix the error in the given paragraph. Remove any repeating sentences, meaningless characters, not English "
    "sentences, and so on. Remove unnecessary repetition. Rewrite any incomplete sentences. Return directly the "
    "results without explanation. Return directly the input paragraph if it is already correct without explanation."
)
#: Stage-two fine-tuning requests (MiniGPT-4 prompts/alignment.txt).
DETAILED_INSTRUCTIONS = [
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
]


def _default_finetune() -> TrainConfig:
    return TrainConfig(steps=50, lr=3e-5, warmup_steps=5, tasks=["caption"], caption_instructions=list(DETAILED_INSTRUCTIONS))


class AlignConfig(Section):
    enabled: bool = True
    # --- generation
    num_images: int = Field(64, ge=1, description="images sampled (seeded) from the data shards")
    split: str = Field("train", description="data split the images are sampled from")
    seed: int = 0
    instruction: str = DESCRIBE_INSTRUCTION
    continue_prompt: str = CONTINUE_PROMPT
    min_answer_tokens: int = Field(80, ge=1, description="continue generation below this length")
    max_continuations: int = Field(1, ge=0, description="how many times a short answer is continued")
    max_new_tokens: int = Field(120, ge=1)
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)
    batch_size: int = Field(8, ge=1)
    # --- rewrite pass
    rewrite: bool = False
    rewrite_model: str | None = Field(None, description="local instruct LLM (path/S3 URI); default SmolLM2-Instruct")
    rewrite_instruction: str = REWRITE_INSTRUCTION
    rewrite_max_new_tokens: int = Field(256, ge=1)
    rewrite_min_overlap: float = Field(0.5, ge=0, le=1,
                                       description="keep the cleaned text when the rewrite shares fewer content words")
    # --- filters
    min_words: int = Field(8, ge=1)
    max_repetition: float = Field(0.3, ge=0, le=1, description="reject when rep-n (share of repeated n-grams) exceeds")
    repetition_ngram: int = Field(3, ge=1)
    min_itc_score: float | None = Field(None, description="reject below this image-text score (model's ITC head)")
    # --- output
    samples_per_shard: int = Field(1000, ge=1)
    min_kept: int = Field(1, ge=0, description="fewest curated descriptions worth fine-tuning on")
    on_too_few: Literal["fail", "skip"] = Field(
        "fail", description="below min_kept: fail the stage, or skip fine-tuning and carry the stage-one model on")
    output: str = Field("", description="curated set URI; empty = <run root>/align")
    finetune: TrainConfig = Field(default_factory=_default_finetune)
    train_on_prompt: bool = Field(
        True, description="also fine-tune on `instruction`, the prompt the curated descriptions answer, next to the "
                          "description requests; false = MiniGPT-4's four requests only (the fix then does not reach "
                          "the detailed prompt: measured on the demo, issue 7)")
    replay_vqa: float = Field(
        0.0, ge=0, lt=1,
        description="share of stage-two examples that replay a curated image's own question-answer pairs (when the "
                    "data has them), so tuning the adapter on descriptions does not erase question answering; "
                    "0 = descriptions only, as in MiniGPT-4 (stronger description gains, VQA is forgotten)")


def stage_two_train_config(align: AlignConfig) -> TrainConfig:
    """The stage-two TrainConfig: ``align.finetune`` with task caption (+ vqa at odds ``align.replay_vqa``) and
    the detailed-description requests (+ the generation prompt with ``align.train_on_prompt``). Idempotent."""
    ft = align.finetune
    replay = align.replay_vqa
    if replay:
        update: dict[str, Any] = {"tasks": ["caption", "vqa"], "task_weights": {"caption": 1 - replay, "vqa": replay}}
    else:
        update = {"tasks": ["caption"], "task_weights": {}}
    instructions = list(ft.caption_instructions)
    if instructions == list(TrainConfig().caption_instructions):  # the generic default
        instructions = list(DETAILED_INSTRUCTIONS)
    if align.train_on_prompt and align.instruction not in instructions:
        instructions.append(align.instruction)
    update["caption_instructions"] = instructions
    return TrainConfig.model_validate({**ft.model_dump(), **update})
