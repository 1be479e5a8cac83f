"""A tiny stage-one VLM that has memorised degenerate descriptions (loops, repeats, cut-offs, junk).

A 2-layer byte-level Llama and the adapter are trained together for a few seconds through the real VLM
forward pass, then saved as a Hugging Face folder + a model artefact, so tests run the real stack
(``llm: {type: hf, source: <folder>}``) and its generations exercise the cleaner and the continuation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vlm.align.config import CONTINUE_PROMPT, DESCRIBE_INSTRUCTION

COLOURS = ["red", "blue", "green"]
# colour -> what the stage-one model writes. Red is short (continued), blue repeats, green loops and is cut off.
DESCRIPTIONS = {
    "red": "A red square.",
    "blue": "A blue circle on a table. A blue circle on a table. It is round.",
    "green": "A green ball on the the the the grass near a tree. It is",
}
CONTINUATION = "It has sharp corners."


def image(colour: str, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def train_stage_one(folder: Path, steps: int = 120, seed: int = 0) -> Path:
    """Train and save; returns the model artefact folder (``folder/model``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlm.models import ModelConfig, build_model
    from vlm.models.llm import tiny_tokenizer

    tok = tiny_tokenizer()
    lm_dir = folder / "lm"
    lcfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(lcfg).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    model = build_model(ModelConfig(vision={"type": "tiny"}, llm={"type": "hf", "source": str(lm_dir)},
                                    generation={"num_beams": 1, "max_new_tokens": 80}))
    model.llm.requires_grad_(True)
    first = model.format_prompt(DESCRIBE_INSTRUCTION)
    examples = [{"image": image(c), "instruction": DESCRIBE_INSTRUCTION, "answer": DESCRIPTIONS[c]} for c in COLOURS]
    examples.append({"image": image("red"), "prompt": f"{first}{DESCRIPTIONS['red']} {CONTINUE_PROMPT}",
                     "answer": CONTINUATION})
    batch = model.collate(examples)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.llm.save_pretrained(lm_dir)  # the memorised LM becomes the "frozen" LLM of the artefact
    model.llm.requires_grad_(False)
    model.save(str(folder / "model"))
    return folder / "model"
