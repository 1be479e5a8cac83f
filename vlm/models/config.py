"""Config of the assembled vision-language model (also stored in the model artefact's vlm_config.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm.configbase import Section

DEFAULT_TEMPLATE = "###Human: <Img><ImageHere></Img> {instruction} ###Assistant: "
IMAGE_PLACEHOLDER = "<ImageHere>"
# describe_first: "<description> Question: <question> Answer: <answer>" after a prompt that holds no question
DESCRIBE_THEN_ANSWER = "Describe the image, then answer the question."
QUESTION_MARKER = "Question:"  # ends the description
ANSWER_MARKER = "Answer:"  # ends the question
DESCRIPTION_TOKENS = 32  # describe_first: new tokens for a description


class VisionConfig(Section):
    """Frozen vision encoder that returns a sequence of visual tokens."""

    type: Literal["efficientnet_lite0", "hf", "tiny"] = "efficientnet_lite0"
    source: str | None = Field(None, description="local path or S3 URI of a Hugging Face vision model (type 'hf')")
    image_size: int | None = Field(None, ge=16, description="input size; None = the encoder's own (224 for "
                                   "EfficientNet-Lite0, the HF config's, 32 for tiny)")
    pool_grid: int | None = Field(None, ge=1, description="average-pool the encoder's square token grid to "
                                  "pool_grid x pool_grid tokens (e.g. 7x7 -> 2x2; a leading CLS token is kept); "
                                  "None = every token")
    cache_size: int = Field(0, ge=0, description="keep the frozen encoder's (pooled) tokens of this many recent "
                        "images in memory, keyed by their pixels (no effect with bottleneck adaptors in the encoder)")
    precision: Literal["fp32", "auto"] = Field(
        "fp32", description="fp32: the frozen encoder computes in fp32 even under bf16 autocast (its bf16 "
        "EfficientNet-Lite0 features cost the stage-one recipe its colours: 0.40 vs 0.95 held out); auto: in the "
        "training's precision (faster for a large ViT on a GPU without vision.cache_size)")

    @model_validator(mode="after")
    def _source_for_hf(self) -> VisionConfig:
        if self.type == "hf" and not self.source:
            raise ValueError("vision.type 'hf' needs vision.source (a local path or s3:// URI)")
        return self


class LLMConfig(Section):
    """Frozen causal language model."""

    type: Literal["smollm2", "hf", "tiny"] = "smollm2"
    source: str | None = Field(None, description="local path or S3 URI of a Hugging Face causal LM (type 'hf')")
    lora_rank: int = Field(0, ge=0, description="0 = no LoRA")
    lora_alpha: int = Field(16, ge=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])

    @model_validator(mode="after")
    def _source_for_hf(self) -> LLMConfig:
        if self.type == "hf" and not self.source:
            raise ValueError("llm.type 'hf' needs llm.source (a local path or s3:// URI)")
        return self


class AdapterConfig(Section):
    """The trained bridge between the vision encoder and the LLM (see vlm/models/adapters/)."""

    type: Literal["linear", "mlp", "perceiver", "qformer", "tinylm"] = "linear"
    num_queries: int = Field(32, ge=1, description="output tokens of perceiver/qformer/tinylm")
    num_layers: int = Field(2, ge=1, description="perceiver/qformer layers; tinylm: transformer LM layers")
    hidden_size: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    stage: Literal["decoder", "adapter"] = Field(
        "adapter", description="tinylm only (PaLM2-VAdapter): 'decoder' trains the tiny LM as a captioner, "
        "'adapter' feeds its outputs to the frozen LLM")

    @model_validator(mode="after")
    def _heads_divide(self) -> AdapterConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"adapter.hidden_size ({self.hidden_size}) must be divisible by adapter.num_heads "
                             f"({self.num_heads})")
        return self


class ExpertsInputConfig(Section):
    """Prismer experts input: a conv stem per expert label map + an experts resampler."""

    stem_channels: int = Field(64, ge=4, description="channels of each expert's five 3x3 conv stem")
    grid: int = Field(7, ge=1, description="each expert map becomes grid x grid tokens")
    num_tokens: int = Field(16, ge=1, description="tokens out of the experts resampler")
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(4, ge=1)


class BottleneckConfig(Section):
    """Prismer's lightweight residual adaptors inside the frozen encoder's and LLM's blocks."""

    enabled: bool = False
    reduction: int = Field(4, ge=1, description="bottleneck width = channels // reduction")
    vision: bool = True
    llm: bool = True


class FusionConfig(Section):
    """mPLUG skip-connected fusion: ``skip_every`` asymmetric co-attention layers, then one connected layer."""

    enabled: bool = False
    num_groups: int = Field(1, ge=1)
    skip_every: int = Field(3, ge=1, description="S: co-attention layers per connected-attention layer (3 in mPLUG)")
    hidden_size: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)
    text_layers: int = Field(1, ge=1, description="unimodal text encoder layers (for ITC)")
    embed_dim: int = Field(128, ge=8, description="ITC embedding size")


class LossConfig(Section):
    """Weights of the objectives; ITC/ITM (mPLUG) need fusion.enabled."""

    caption: float = Field(1.0, ge=0)
    answer: float = Field(1.0, gt=0, description="describe_first: weight of each answer token (the words after "
                          "'Answer:') in the LM loss, against 1 for each token of the description")
    itc: float = Field(0.0, ge=0)
    itm: float = Field(0.0, ge=0)


class GenerationConfig(Section):
    num_beams: int = Field(3, ge=1)
    max_new_tokens: int = Field(40, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)


class ModelConfig(Section):
    vision: VisionConfig = VisionConfig()
    llm: LLMConfig = LLMConfig()
    adapter: AdapterConfig = AdapterConfig()
    experts: list[str] = Field(default_factory=list, description="expert label maps fed to the model")
    experts_input: ExpertsInputConfig = ExpertsInputConfig()
    bottleneck: BottleneckConfig = BottleneckConfig()
    fusion: FusionConfig = FusionConfig()
    losses: LossConfig = LossConfig()
    prompt_template: str = DEFAULT_TEMPLATE
    end_sym: str = Field("###", description="appended to answers in training; generation stops on it (\"\" = EOS only)")
    max_length: int = Field(256, ge=8, description="text tokens per example (prompt + answer), longer is cut")
    generation: GenerationConfig = GenerationConfig()
    describe_first: bool = Field(
        False, description="a VQA example with a caption teaches, after the prompt DESCRIBE_THEN_ANSWER (no "
        "question in it), '<caption> Question:', then gives the question ('<question> Answer:', not learnt) and "
        "teaches the answer: the model puts the image into words before it sees the question (a question seen "
        "first primes the description: 'is there a red shape?' -> 'A red triangle'), and the answer follows both "
        "(with llm.lora_rank the LLM learns that comparison from text). answer() describes each image once and "
        "answers every question about it after that description")
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = Field(0, description="seed of tiny random encoders and of the trainable parts' initialisation")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.prompt_template.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"prompt_template must contain {IMAGE_PLACEHOLDER} exactly once")
        if "{instruction}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {instruction}")
        if (self.losses.itc or self.losses.itm) and not self.fusion.enabled:
            raise ValueError("losses.itc / losses.itm need fusion.enabled: true (mPLUG)")
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts has duplicates: {self.experts}")
        return self
