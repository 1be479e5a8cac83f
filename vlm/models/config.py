"""Config of the assembled vision-language model (also stored in the model artefact's vlm_config.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm.configbase import Section

DEFAULT_TEMPLATE = "###Human: <Img><ImageHere></Img> {instruction} ###Assistant: "


class VisionConfig(Section):
    """Frozen vision encoder that returns a sequence of visual tokens."""

    type: Literal["efficientnet_lite0", "hf", "tiny"] = "efficientnet_lite0"
    source: str | None = Field(None, description="local path or S3 URI of a Hugging Face vision model")
    image_size: int = Field(224, ge=16)


class LLMConfig(Section):
    """Frozen causal language model."""

    type: Literal["smollm2", "hf", "tiny"] = "smollm2"
    source: str | None = Field(None, description="local path or S3 URI of a Hugging Face causal LM")
    lora_rank: int = Field(0, ge=0, description="0 = no LoRA")


class AdapterConfig(Section):
    """The trained bridge between the vision encoder and the LLM."""

    type: Literal["linear", "mlp", "perceiver", "qformer", "tinylm"] = "linear"
    num_queries: int = Field(32, ge=1)
    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)


class GenerationConfig(Section):
    num_beams: int = Field(3, ge=1)
    max_new_tokens: int = Field(40, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)


class ModelConfig(Section):
    vision: VisionConfig = VisionConfig()
    llm: LLMConfig = LLMConfig()
    adapter: AdapterConfig = AdapterConfig()
    experts: list[str] = Field(default_factory=list, description="expert label maps fed to the model")
    prompt_template: str = DEFAULT_TEMPLATE
    generation: GenerationConfig = GenerationConfig()
    bf16: bool = False
    gradient_checkpointing: bool = False
