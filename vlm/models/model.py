"""The assembled vision-language model: frozen vision encoder -> trainable adapter -> frozen causal LLM.

The MiniGPT-4 template ``###Human: <Img><ImageHere></Img> {instruction} ###Assistant: `` is split at
``<ImageHere>``; the adapter's tokens are spliced in between the two text parts. Training batches are
right-padded with the loss only on answer tokens (+ ``end_sym``); generation left-pads and runs the LLM's
own greedy / beam search from ``inputs_embeds``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm.models.adapters import build_adapter
from vlm.models.config import (ANSWER_MARKER, DESCRIBE_THEN_ANSWER, DESCRIPTION_TOKENS, IMAGE_PLACEHOLDER,
                               QUESTION_MARKER, ModelConfig)
from vlm.models.experts import ExpertsInput, collate_experts
from vlm.models.fusion import MPlugFusion
from vlm.models.layers import Bottleneck
from vlm.models.llm import build_llm, decoder_layers
from vlm.models.vision import ImageLike, TokenCache, build_vision, pool_tokens

log = logging.getLogger(__name__)


class VLMOutput:
    """``loss``, per-objective ``losses`` and ``logits`` ``(B, T, V)``, computed on first access only: training
    reads the loss alone, which needs the LM head on the supervised positions only."""

    def __init__(self, loss: torch.Tensor | None, logits: torch.Tensor | Callable[[], torch.Tensor],
                 losses: dict[str, torch.Tensor] | None = None):
        self.loss, self.losses = loss, dict(losses or {})
        self._logits = logits

    @property
    def logits(self) -> torch.Tensor:
        if callable(self._logits):
            self._logits = self._logits()
        return self._logits


def _residual_hook(adaptor: nn.Module):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (adaptor(output[0]), *output[1:])
        return adaptor(output)

    return hook


class VisionLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig, vision: nn.Module, llm: nn.Module, tokenizer: Any):
        super().__init__()
        self.config = config
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        llm_dim = llm.get_input_embeddings().embedding_dim
        vocab = llm.get_input_embeddings().num_embeddings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.experts_input = (ExpertsInput(config.experts, config.experts_input, vision.hidden_size)
                                  if config.experts else None)
            self.adapter = build_adapter(config.adapter, vision.hidden_size, llm_dim, vocab)
            self.fusion = MPlugFusion(config.fusion, llm_dim, config.fusion.hidden_size) if config.fusion.enabled else None
            self.vision_adaptors = nn.ModuleList()
            self.llm_adaptors = nn.ModuleList()
            if config.bottleneck.enabled:
                self._insert_bottlenecks()
        if config.llm.lora_rank:
            from peft import LoraConfig, get_peft_model

            self.llm = get_peft_model(self.llm, LoraConfig(r=config.llm.lora_rank, lora_alpha=config.llm.lora_alpha,
                                                           target_modules=config.llm.lora_targets, lora_dropout=0.0))
        if config.gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        before, after = config.prompt_template.split(IMAGE_PLACEHOLDER)
        self._template = (before, after)
        self._vision_cache = TokenCache(config.vision.cache_size) if config.vision.cache_size else None
        self.train(False)

    # ----------------------------------------------------------------------------------- setup
    def _insert_bottlenecks(self) -> None:
        cfg = self.config.bottleneck
        if cfg.vision:
            blocks = self.vision.blocks()
            if not blocks:
                raise ValueError(f"bottleneck adaptors: vision encoder {self.config.vision.type!r} exposes no blocks")
            for module, dim in blocks:
                self.vision_adaptors.append(Bottleneck(dim, cfg.reduction))
                module.register_forward_hook(_residual_hook(self.vision_adaptors[-1]))
        if cfg.llm:
            dim = self.llm.get_input_embeddings().embedding_dim
            for layer in decoder_layers(self.llm):
                self.llm_adaptors.append(Bottleneck(dim, cfg.reduction))
                layer.register_forward_hook(_residual_hook(self.llm_adaptors[-1]))

    def train(self, mode: bool = True) -> VisionLanguageModel:
        super().train(mode)
        self.vision.eval()  # frozen (BatchNorm statistics must not move)
        self.llm.train(mode and self.config.gradient_checkpointing)  # HF checkpoints only in train mode
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode for the block (dropout off), the previous mode restored after."""
        was_training = self.training
        self.train(False)
        try:
            yield
        finally:
            self.train(was_training)

    def _autocast(self):
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ----------------------------------------------------------------------------------- text
    def format_prompt(self, instruction: str) -> str:
        return self.config.prompt_template.replace("{instruction}", instruction)

    def _tok(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _prompt_parts(self, prompt: str) -> tuple[list[int], list[int]]:
        if prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"a prompt must contain {IMAGE_PLACEHOLDER} exactly once: {prompt[:80]!r}")
        before, after = prompt.split(IMAGE_PLACEHOLDER)
        return self._tok(before), self._tok(after)

    def _resolve_prompts(self, n: int, instructions: Sequence[str] | None, prompts: Sequence[str] | None) -> list[str]:
        if prompts is not None:
            if len(prompts) != n:
                raise ValueError(f"{len(prompts)} prompts for {n} images")
            return list(prompts)
        if instructions is None:
            instructions = ["Describe this image in detail."] * n
        elif isinstance(instructions, str):
            instructions = [instructions] * n
        if len(instructions) != n:
            raise ValueError(f"{len(instructions)} instructions for {n} images")
        return [self.format_prompt(i) for i in instructions]

    # ----------------------------------------------------------------------------------- batches
    def target(self, example: Mapping[str, Any]) -> list[tuple[str, float]]:
        """The text after an example's prompt as ``(text, loss weight)`` pieces, each tokenised on its own;
        weight 0 = given, not taught. ``[(answer + end_sym, 1)]``; with ``describe_first`` a VQA example with a
        caption: ``[("<caption> Question:", 1), (" <question> Answer:", 0), (" <answer>###", losses.answer)]``
        after the prompt :data:`DESCRIBE_THEN_ANSWER`, so the description never sees the question."""
        answer = example.get("answer")
        if answer is None:
            return []
        if self._describes(example):
            question = (example.get("instruction") or "").strip()
            return [(f"{example['caption'].strip()} {QUESTION_MARKER}", 1.0), (f" {question} {ANSWER_MARKER}", 0.0),
                    (f" {answer}{self.config.end_sym}", self.config.losses.answer)]
        return [(answer + self.config.end_sym, 1.0)]

    def _describes(self, example: Mapping[str, Any]) -> bool:
        return bool(self.config.describe_first and example.get("task") == "vqa" and example.get("caption"))

    def _example_prompt(self, example: Mapping[str, Any], i: int) -> str:
        if self._describes(example):
            return self.format_prompt(DESCRIBE_THEN_ANSWER)
        if example.get("prompt"):
            return example["prompt"]
        if example.get("instruction") is None:
            raise ValueError(f"example {i}: needs 'instruction' or 'prompt'")
        return self.format_prompt(example["instruction"])

    def collate(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Examples ``{image, instruction|prompt, answer, experts?}`` -> a right-padded training batch."""
        if not examples:
            raise ValueError("collate needs at least one example")
        ids, labels, weights, positions = [], [], [], []
        pad = self.tokenizer.pad_token_id
        for i, ex in enumerate(examples):
            before, after = self._prompt_parts(self._example_prompt(ex, i))
            n_prompt = len(before) + len(after)
            if n_prompt >= self.config.max_length:
                raise ValueError(f"example {i}: prompt has {n_prompt} tokens, max_length is {self.config.max_length}")
            tail, taught, tail_weights = [], [], []
            for text, weight in self.target(ex):
                piece = self._tok(text)
                tail += piece
                taught += piece if weight else [-100] * len(piece)
                tail_weights += [weight] * len(piece)
            room = self.config.max_length - n_prompt
            ids.append(before + after + tail[:room])
            labels.append([-100] * n_prompt + taught[:room])
            weights.append([0.0] * n_prompt + tail_weights[:room])
            positions.append(len(before))
        width = max(len(x) for x in ids)
        batch = {
            "pixel_values": self.vision.preprocess([ex["image"] for ex in examples]),
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "image_positions": torch.tensor(positions),
        }
        if self.config.describe_first and self.config.losses.answer != 1.0:
            batch["loss_weights"] = torch.tensor([w + [0.0] * (width - len(w)) for w in weights])
        if self.config.experts:
            batch["expert_maps"], batch["experts_present"] = collate_experts(
                self.config.experts, [ex.get("experts") for ex in examples], self.vision.image_size)
        return batch

    # ----------------------------------------------------------------------------------- forward
    def visual_tokens(self, pixel_values: torch.Tensor, expert_maps: torch.Tensor | None = None,
                      experts_present: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen encoder tokens (+ experts resampler tokens) in the vision width, before the adapter."""
        grad = torch.is_grad_enabled() and len(self.vision_adaptors) > 0
        with torch.set_grad_enabled(grad), self._encoder_precision():
            if self._vision_cache is not None and not self.vision_adaptors:
                dev = self.device.type
                salt = str(torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else "fp32"
                x = self._vision_cache(pixel_values, self._encode, salt)
            else:
                x = self._encode(pixel_values)
        if self.experts_input is not None:
            if expert_maps is None:
                b = x.shape[0]
                n = len(self.config.experts)
                s = self.vision.image_size
                expert_maps = torch.zeros(b, n, s, s, dtype=torch.uint8)
                experts_present = torch.zeros(b, n, dtype=torch.bool)
            x = torch.cat([x, self.experts_input(expert_maps.to(self.device), experts_present.to(self.device))], 1)
        return x

    def _encoder_precision(self):
        """``vision.precision: fp32``: no autocast around the frozen encoder (bf16 EfficientNet-Lite0 features
        lose colour); ``auto``: the caller's autocast."""
        if self.config.vision.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.vision(pixel_values.to(self.device))
        return pool_tokens(x, self.config.vision.pool_grid) if self.config.vision.pool_grid else x

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.device))

    @staticmethod
    def _select(ids: torch.Tensor, keep: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` restricted to ``keep`` positions, right-padded -> (ids, mask)."""
        rows = [row[k] for row, k in zip(ids, keep.bool())]
        width = max(1, max(len(r) for r in rows))
        out = ids.new_full((len(rows), width), pad)
        mask = ids.new_zeros((len(rows), width))
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return out, mask

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, image_positions: torch.Tensor | None = None,
                expert_maps: torch.Tensor | None = None, experts_present: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None) -> VLMOutput:
        dev = self.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        labels = labels.to(dev) if labels is not None else None
        if image_positions is None:
            image_positions = torch.zeros(len(input_ids), dtype=torch.long)
        pad = self.tokenizer.pad_token_id
        with self._autocast():
            vis = self.visual_tokens(pixel_values, expert_maps, experts_present)
            if self.config.adapter.type == "tinylm" and self.config.adapter.stage == "decoder":
                if labels is None:
                    raise ValueError("tinylm decoder stage needs labels (answers)")
                ans_ids, ans_mask = self._select(input_ids, labels != -100, pad)
                loss, logits = self.adapter.decoder_loss(vis, ans_ids, ans_mask)
                return VLMOutput(loss=loss, logits=logits, losses={"decoder": loss})
            img = self.adapter(vis)
            if self.fusion is not None:
                prompt_keep = attention_mask.bool() & ((labels == -100) if labels is not None else True)
                p_ids, p_mask = self._select(input_ids, prompt_keep, pad)
                img = self.fusion(img, self._embed(p_ids), p_mask)
            embeds, attn, full_labels = self._splice(img, self._embed(input_ids), attention_mask, labels,
                                                     image_positions)
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attn).last_hidden_state
        head = self.llm.get_output_embeddings()

        def logits() -> torch.Tensor:
            with self._autocast():
                return head(hidden)

        losses: dict[str, torch.Tensor] = {}
        if full_labels is not None:
            target = full_labels[:, 1:]
            keep = target != -100  # the LM head and cross-entropy on supervised positions only
            with self._autocast():
                sup = head(hidden[:, :-1][keep])
            if loss_weights is None:
                losses["caption"] = F.cross_entropy(sup.float(), target[keep])
            else:
                w = loss_weights.to(dev)[labels != -100]  # the supervised tokens in the same order as target[keep]
                losses["caption"] = (F.cross_entropy(sup.float(), target[keep], reduction="none") * w).sum() / w.sum()
            w = self.config.losses
            if self.fusion is not None and (w.itc or w.itm) and len(input_ids) > 1:
                a_ids, a_mask = self._select(input_ids, labels != -100, pad)
                with self._autocast():
                    losses.update(self.fusion.contrastive_losses(self.adapter(vis), self._embed(a_ids), a_mask, a_ids))
        if not losses:
            return VLMOutput(loss=None, logits=logits, losses={})
        weights = {"caption": self.config.losses.caption, "itc": self.config.losses.itc, "itm": self.config.losses.itm}
        loss = sum(weights[k] * v for k, v in losses.items())
        return VLMOutput(loss=loss, logits=logits, losses=losses)

    @staticmethod
    def _splice(img: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                positions: torch.Tensor):
        m = img.shape[1]
        embeds, masks, labs = [], [], []
        for i, p in enumerate(positions.tolist()):
            embeds.append(torch.cat([emb[i, :p], img[i].to(emb.dtype), emb[i, p:]]))
            masks.append(torch.cat([mask[i, :p], mask.new_ones(m), mask[i, p:]]))
            if labels is not None:
                labs.append(torch.cat([labels[i, :p], labels.new_full((m,), -100), labels[i, p:]]))
        return torch.stack(embeds), torch.stack(masks), (torch.stack(labs) if labels is not None else None)

    # ----------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, images: Sequence[ImageLike], instructions: Sequence[str] | str | None = None,
                 prompts: Sequence[str] | None = None, num_beams: int | None = None,
                 max_new_tokens: int | None = None, repetition_penalty: float | None = None,
                 experts: Sequence[Mapping[str, np.ndarray] | None] | None = None) -> list[str]:
        """Caption each image / follow each instruction. Greedy when ``num_beams == 1``, beam search otherwise;
        stops on ``end_sym`` or EOS and returns the text before ``end_sym``. Questions go to :meth:`answer`."""
        return self._texts(self.generate_ids(images, instructions, prompts, num_beams, max_new_tokens,
                                             repetition_penalty, experts))

    @torch.no_grad()
    def describe(self, images: Sequence[ImageLike], num_beams: int | None = None,
                 experts: Sequence[Mapping[str, np.ndarray] | None] | None = None) -> list[str]:
        """``describe_first``: each image in words, as written before a question is seen (what :meth:`answer`
        answers after)."""
        ids = self.generate_ids(images, DESCRIBE_THEN_ANSWER, num_beams=num_beams, max_new_tokens=DESCRIPTION_TOKENS,
                                experts=experts, stop=QUESTION_MARKER)
        return [t.split(QUESTION_MARKER)[0].strip() for t in self._texts(ids)]

    @torch.no_grad()
    def answer(self, images: Sequence[ImageLike], questions: Sequence[str], *,
               descriptions: Sequence[str] | None = None, num_beams: int | None = None,
               max_new_tokens: int | None = None,
               experts: Sequence[Mapping[str, np.ndarray] | None] | None = None) -> list[str]:
        """Answer each question about its image. Without ``describe_first``: :meth:`generate` with the question
        as the instruction. With it, as training teaches: after the image's description (``descriptions``, else
        :meth:`describe`, once per distinct image object) and the question, the answer alone is generated."""
        images, questions = list(images), list(questions)
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions for {len(images)} images")
        if not self.config.describe_first:
            return self.generate(images, questions, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 experts=experts)
        if descriptions is None:
            rows, which = distinct_images(images)
            written = self.describe([images[i] for i in rows], num_beams,
                                    [experts[i] for i in rows] if experts is not None else None)
            descriptions = [written[j] for j in which]
        if len(descriptions) != len(images):
            raise ValueError(f"{len(descriptions)} descriptions for {len(images)} images")
        given = [self._tok(f"{d} {QUESTION_MARKER}") + self._tok(f" {q.strip()} {ANSWER_MARKER}")
                 for d, q in zip(descriptions, questions)]
        return self._texts(self.generate_ids(images, DESCRIBE_THEN_ANSWER, num_beams=num_beams,
                                             max_new_tokens=max_new_tokens, experts=experts, given=given))

    def _texts(self, ids: torch.Tensor) -> list[str]:
        """New token ids -> their text before ``end_sym``."""
        end = self.config.end_sym
        return [(t.split(end)[0] if end else t).strip()
                for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, images: Sequence[ImageLike], instructions: Sequence[str] | str | None = None,
                     prompts: Sequence[str] | None = None, num_beams: int | None = None,
                     max_new_tokens: int | None = None, repetition_penalty: float | None = None,
                     experts: Sequence[Mapping[str, np.ndarray] | None] | None = None,
                     given: Sequence[list[int]] | None = None, stop: str | None = None) -> torch.Tensor:
        """Like :meth:`generate` but returns the new token ids ``(B, T)`` (padded with the pad id).
        ``given``: per row, token ids that follow the prompt before the new ones (not among those returned);
        ``stop``: a stop string besides ``end_sym``."""
        from transformers import GenerationConfig

        images = list(images)
        prompts = self._resolve_prompts(len(images), instructions, prompts)
        g = self.config.generation
        beams = num_beams or g.num_beams
        pad = self.tokenizer.pad_token_id
        parts = [self._prompt_parts(p) for p in prompts]
        pixel_values = self.vision.preprocess(images)
        maps = present = None
        if self.config.experts:
            maps, present = collate_experts(self.config.experts, list(experts or [None] * len(images)),
                                            self.vision.image_size)
        with self._eval_mode(), self._autocast():
            img = self.adapter(self.visual_tokens(pixel_values, maps, present))
            if self.fusion is not None:
                p_ids, p_mask = self._pad_right([b + a for b, a in parts], pad)
                img = self.fusion(img, self._embed(p_ids), p_mask.to(self.device))
            dtype = self.llm.get_input_embeddings().weight.dtype
            if given is not None:
                if len(given) != len(parts):
                    raise ValueError(f"{len(given)} given continuations for {len(parts)} images")
                parts = [(b, a + list(x)) for (b, a), x in zip(parts, given)]
            seqs = [torch.cat([self._embed(torch.tensor(b, dtype=torch.long)), img[i].to(dtype),
                               self._embed(torch.tensor(a, dtype=torch.long))]) for i, (b, a) in enumerate(parts)]
            width = max(len(s) for s in seqs)
            embeds = torch.stack([F.pad(s, (0, 0, width - len(s), 0)) for s in seqs])  # left padding
            attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            stops = [x for x in (self.config.end_sym, stop) if x]
            gen_cfg = GenerationConfig(
                max_new_tokens=max_new_tokens or g.max_new_tokens, num_beams=beams,
                repetition_penalty=repetition_penalty or g.repetition_penalty, do_sample=False,
                pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, stop_strings=stops or None,
                **({"early_stopping": True} if beams > 1 else {}))
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attn, generation_config=gen_cfg,
                                     tokenizer=self.tokenizer)

    @torch.no_grad()
    def itc_score(self, images: Sequence[ImageLike], texts: Sequence[str]) -> list[float]:
        """Image-text cosine from the ITC head (mPLUG fusion), one per (image, text) pair, in [-1, 1].

        Texts are tokenised like training answers (``+ end_sym``) and cut to the fusion's position table."""
        if self.fusion is None:
            raise ValueError("the model has no ITC head: enable fusion (fusion.enabled) and train it with losses.itc > 0")
        images, texts = list(images), list(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        pad = self.tokenizer.pad_token_id
        limit = self.fusion.max_text_tokens
        ids, mask = self._pad_right([self._tok(t + self.config.end_sym)[:limit] or [pad] for t in texts], pad)
        with self._eval_mode(), self._autocast():
            img = self.adapter(self.visual_tokens(self.vision.preprocess(images)))
            return self.fusion.itc_similarity(img, self._embed(ids), mask.to(self.device)).tolist()

    @staticmethod
    def _pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(r) for r in rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask

    # ----------------------------------------------------------------------------------- weights
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"trainable weights do not match this model: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''} (wrong adapter type or config?)")
        with torch.no_grad():
            for n, p in params.items():
                if p.shape != state[n].shape:
                    raise ValueError(f"{n}: checkpoint shape {tuple(state[n].shape)} != model {tuple(p.shape)}")
                p.copy_(state[n].to(p.dtype))

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": trainable, "frozen": frozen}

    def save(self, uri: str) -> str:
        from vlm.models.artifact import save_model

        return save_model(self, uri)


def distinct_images(images: Sequence[Any]) -> tuple[list[int], list[int]]:
    """The first row of each distinct image object (several questions about one image share it), and for every
    row the index of its image among those."""
    index: dict[int, int] = {}
    rows: list[int] = []
    which = []
    for i, image in enumerate(images):
        if id(image) not in index:
            index[id(image)] = len(rows)
            rows.append(i)
        which.append(index[id(image)])
    return rows, which


def build_model(cfg: ModelConfig | Mapping[str, Any] | None = None) -> VisionLanguageModel:
    """Frozen vision encoder + frozen LLM + trainable adapter (and experts / fusion / bottlenecks per config)."""
    if cfg is None:
        cfg = ModelConfig()
    elif not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.model_validate(cfg)
    vision = build_vision(cfg.vision, cfg.seed)
    llm, tokenizer = build_llm(cfg.llm, cfg.seed)
    model = VisionLanguageModel(cfg, vision, llm, tokenizer)
    counts = model.parameter_counts()
    log.info("built VLM (%s + %s + %s adapter): %s trainable / %s frozen parameters", cfg.vision.type, cfg.llm.type,
             cfg.adapter.type, f"{counts['trainable']:,}", f"{counts['frozen']:,}")
    return model
