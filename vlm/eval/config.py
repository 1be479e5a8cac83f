"""Config of the evaluation stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm.configbase import Section


class EvalConfig(Section):
    tasks: list[Literal["caption", "vqa", "retrieval"]] = Field(default_factory=lambda: ["caption", "vqa"])
    split: str = Field("test", description="split of our shards to evaluate (ignored for COCO/VQAv2 json files)")
    max_samples: int | None = Field(200, ge=1, description="images evaluated at most (None = all)")
    batch_size: int = Field(8, ge=1)
    num_beams: int = Field(3, ge=1)
    max_new_tokens: int = Field(30, ge=1)
    output: str = Field("", description="report URI; empty = <run root>/eval")
    caption_instruction: str = Field("Describe this image briefly.", description="instruction for captioning")
    vqa_instruction: str = Field("{question}", description="instruction for VQA; {question} is replaced")
    max_questions: int | None = Field(None, ge=1, description="VQA questions scored at most (None = all)")
    vqa_max_new_tokens: int = Field(10, ge=1, description="answers are short")
    perplexity: bool = Field(True, description="held-out caption perplexity (caption task)")
    retrieval_max_images: int = Field(32, ge=2, description="retrieval scores images x captions pairs: keep it small")
    retrieval_captions_per_image: int = Field(1, ge=1)
    retrieval_ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    tokenizer: Literal["auto", "ptb", "simple"] = Field("auto", description="caption tokenizer; auto = PTB if Java")
    meteor: bool | None = Field(None, description="compute METEOR (needs Java); None = when Java is present")
    image_root: str = Field("", description="COCO/VQAv2 json inputs: image folder (default: next to the json)")
    vqa_annotations: str = Field("", description="VQAv2: annotations json (default: found next to the questions)")
    report_examples: int = Field(8, ge=0, description="example images with generated text in the report")
    baselines: bool = Field(True, description="report text-only baselines (majority answer, question lookup, "
                                              "constant caption) from the train split of shard data")
    baseline_max_samples: int | None = Field(5000, ge=1, description="train images read for the baselines at most")
    compare_to: str = Field("", description="registered model name: the report shows the change vs its champion "
                                            "(the pipeline sets the model it registers)")
