"""mPLUG: skip-connected fusion and the auxiliary image-text objectives (ITC, ITM with in-batch hard negatives).

The fusion runs ``num_groups`` groups of ``skip_every`` (S) asymmetric co-attention layers, where only the text
attends to the visual tokens (cheap: the long visual sequence is never updated), followed by one
connected-attention layer where visual and text tokens attend jointly. The visual stream's output is added
back (zero-initialised projection) to the adapter's tokens that go to the LLM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlm.models.config import FusionConfig
from vlm.models.layers import Block


#: Rows of the text position table (CLS included).
TEXT_POSITIONS = 512


class MPlugFusion(nn.Module):
    #: Longest text (in LLM tokens) the text stream encodes.
    max_text_tokens = TEXT_POSITIONS - 1

    def __init__(self, cfg: FusionConfig, llm_dim: int, hidden: int):
        super().__init__()
        heads = cfg.num_heads if hidden % cfg.num_heads == 0 else 1
        self.in_v = nn.Linear(llm_dim, hidden)
        self.in_t = nn.Linear(llm_dim, hidden)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.pos = nn.Parameter(torch.randn(TEXT_POSITIONS, hidden) * 0.02)
        self.text_encoder = nn.ModuleList(Block(hidden, heads) for _ in range(cfg.text_layers))
        self.groups = nn.ModuleList()
        for _ in range(cfg.num_groups):
            co = nn.ModuleList(Block(hidden, heads, cross_dim=hidden) for _ in range(cfg.skip_every))
            self.groups.append(nn.ModuleDict({"co": co, "connected": Block(hidden, heads)}))
        self.norm_v = nn.LayerNorm(hidden)
        self.out_v = nn.Linear(hidden, llm_dim)
        nn.init.zeros_(self.out_v.weight)
        nn.init.zeros_(self.out_v.bias)
        # ITC / ITM heads
        self.itc_v = nn.Linear(hidden, cfg.embed_dim)
        self.itc_t = nn.Linear(hidden, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.itm_head = nn.Linear(hidden, 2)

    # ----------------------------------------------------------------------------------- streams
    def encode_text(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM word embeddings (B, T, llm_dim) -> text tokens with a leading CLS (B, 1+T, hidden), mask."""
        t = self.in_t(text)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        t = t + self.pos[: t.shape[1]]
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1).bool()
        for block in self.text_encoder:
            t = block(t, mask=mask)
        return t, mask

    def _fuse(self, v: torch.Tensor, t: torch.Tensor, t_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = v.shape[1]
        for group in self.groups:
            for block in group["co"]:
                t = block(t, context=v, mask=t_mask)
            joint = group["connected"](torch.cat([v, t], 1), mask=torch.cat([t_mask.new_ones(v.shape[:2]), t_mask], 1))
            v, t = joint[:, :n], joint[:, n:]
        return v, t

    def forward(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Fuse the adapter's tokens (B, M, llm_dim) with the prompt's word embeddings -> (B, M, llm_dim)."""
        t, t_mask = self.encode_text(text, text_mask)
        v, _ = self._fuse(self.in_v(visual), t, t_mask)
        return visual + self.out_v(self.norm_v(v))

    # ----------------------------------------------------------------------------------- objectives
    def _itc_features(self, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit ITC embeddings: the mean visual token and the text CLS token, projected."""
        return F.normalize(self.itc_v(v.mean(1)), dim=-1), F.normalize(self.itc_t(t[:, 0]), dim=-1)

    def itc_similarity(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Cosine (B,) between image i and text i in the ITC space training uses; in [-1, 1]."""
        t, _ = self.encode_text(text, text_mask)
        v_feat, t_feat = self._itc_features(self.in_v(visual), t)
        return (v_feat.float() * t_feat.float()).sum(-1)

    def contrastive_losses(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                           text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """ITC over the batch and ITM with the hardest in-batch negatives (identical texts are never negatives)."""
        b = visual.shape[0]
        v = self.in_v(visual)
        t, t_mask = self.encode_text(text, text_mask)
        v_feat, t_feat = self._itc_features(v, t)
        sim = self.logit_scale.exp().clamp(max=100) * v_feat @ t_feat.T
        target = torch.arange(b, device=sim.device)
        itc = (F.cross_entropy(sim.float(), target) + F.cross_entropy(sim.T.float(), target)) / 2

        same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)  # (B, B) identical texts
        with torch.no_grad():
            s = sim.detach().float().masked_fill(same, float("-inf"))
            neg_text = s.argmax(1)  # hardest negative text per image
            neg_img = s.argmax(0)  # hardest negative image per text
            has_neg_t = torch.isfinite(s.max(1).values)
            has_neg_i = torch.isfinite(s.max(0).values)
        vi = torch.cat([v, v[has_neg_t], v[neg_img][has_neg_i]])
        ti = torch.cat([t, t[neg_text][has_neg_t], t[has_neg_i]])
        mi = torch.cat([t_mask, t_mask[neg_text][has_neg_t], t_mask[has_neg_i]])
        _, fused = self._fuse(vi, ti, mi)
        logits = self.itm_head(fused[:, 0])
        labels = torch.cat([torch.ones(b), torch.zeros(len(vi) - b)]).long().to(logits.device)
        itm = F.cross_entropy(logits.float(), labels)
        return {"itc": itc, "itm": itm}
