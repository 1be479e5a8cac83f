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
from vlm.models.config import ANSWER_MARKER, DESCRIPTION_TOKENS, IMAGE_PLACEHOLDER, ModelConfig
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
    def target(self, example: Mapping[str, Any]) -> tuple[str, str] | None:
        """What an example teaches, as (description, answer): ``("", answer)``; with ``describe_first`` a VQA
        example with a caption teaches ``("<caption> <question> Answer:", " <answer>")``: the image in words,
        then the question again, so that the answer follows both (the order a reader compares them in)."""
        answer = example.get("answer")
        if answer is None:
            return None
        caption = example.get("caption")
        if self.config.describe_first and example.get("task") == "vqa" and caption:
            question = (example.get("instruction") or "").strip()
            return " ".join(p for p in (caption.strip(), question, ANSWER_MARKER) if p), f" {answer}"
        return "", answer

    def collate(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Examples ``{image, instruction|prompt, answer, experts?}`` -> a right-padded training batch."""
        if not examples:
            raise ValueError("collate needs at least one example")
        ids, labels, weights, positions = [], [], [], []
        pad = self.tokenizer.pad_token_id
        for i, ex in enumerate(examples):
            prompt = ex.get("prompt") or (self.format_prompt(ex["instruction"]) if ex.get("instruction") is not None
                                          else None)
            if prompt is None:
                raise ValueError(f"example {i}: needs 'instruction' or 'prompt'")
            before, after = self._prompt_parts(prompt)
            target = self.target(ex)
            desc, ans = (self._tok(target[0]), self._tok(target[1] + self.config.end_sym)) if target else ([], [])
            n_prompt = len(before) + len(after)
            if n_prompt >= self.config.max_length:
                raise ValueError(f"example {i}: prompt has {n_prompt} tokens, max_length is {self.config.max_length}")
            taught = (desc + ans)[: self.config.max_length - n_prompt]
            ids.append(before + after + taught)
            labels.append([-100] * n_prompt + taught)
            weights.append(([1.0] * len(desc) + [self.config.losses.answer] * len(ans))[: len(taught)])
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
            batch["loss_weights"] = torch.tensor([[0.0] * (len(x) - len(w)) + w + [0.0] * (width - len(x))
                                                  for x, w in zip(ids, weights)])
        if self.config.experts:
            batch["expert_maps"], batch["experts_present"] = collate_experts(
                self.config.experts, [ex.get("experts") for ex in examples], self.vision.image_size)
        return batch

    # ----------------------------------------------------------------------------------- forward
    def visual_tokens(self, pixel_values: torch.Tensor, expert_maps: torch.Tensor | None = None,
                      experts_present: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen encoder tokens (+ experts resampler tokens) in the vision width, before the adapter."""
        grad = torch.is_grad_enabled() and len(self.vision_adaptors) > 0
        with torch.set_grad_enabled(grad):
            if self._vision_cache is not None and not self.vision_adaptors:
                salt = str(torch.get_autocast_dtype(self.device.type)) if torch.is_autocast_enabled() else "fp32"
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
        """Caption / answer each image. Greedy when ``num_beams == 1``, beam search otherwise; stops on
        ``end_sym`` or EOS and returns the text before ``end_sym``. With ``describe_first`` the model gets
        ``DESCRIPTION_TOKENS`` more new tokens and an answer comes back without its description."""
        ids = self.generate_ids(images, instructions, prompts, num_beams, max_new_tokens, repetition_penalty, experts)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        end = self.config.end_sym
        texts = [(t.split(end)[0] if end else t).strip() for t in texts]
        if self.config.describe_first:  # "<description> Answer: <answer>" -> the answer
            texts = [t.rsplit(ANSWER_MARKER, 1)[1].strip() if ANSWER_MARKER in t else t for t in texts]
        return texts

    @torch.no_grad()
    def generate_ids(self, images: Sequence[ImageLike], instructions: Sequence[str] | str | None = None,
                     prompts: Sequence[str] | None = None, num_beams: int | None = None,
                     max_new_tokens: int | None = None, repetition_penalty: float | None = None,
                     experts: Sequence[Mapping[str, np.ndarray] | None] | None = None) -> torch.Tensor:
        """Like :meth:`generate` but returns the new token ids ``(B, T)`` (padded with the pad id)."""
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
            seqs = [torch.cat([self._embed(torch.tensor(b, dtype=torch.long)), img[i].to(dtype),
                               self._embed(torch.tensor(a, dtype=torch.long))]) for i, (b, a) in enumerate(parts)]
            width = max(len(s) for s in seqs)
            embeds = torch.stack([F.pad(s, (0, 0, width - len(s), 0)) for s in seqs])  # left padding
            attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            gen_cfg = GenerationConfig(
                max_new_tokens=(max_new_tokens or g.max_new_tokens) + (DESCRIPTION_TOKENS if self.config.describe_first
                                                                        else 0), num_beams=beams,
                repetition_penalty=repetition_penalty or g.repetition_penalty, do_sample=False,
                pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
                stop_strings=[self.config.end_sym] if self.config.end_sym else None,
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
