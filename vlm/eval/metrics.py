"""Evaluation metrics: COCO caption scores, VQAv2 accuracy, retrieval recall@k and perplexity.

All functions are pure (no model, no I/O except the Java helpers pycocoevalcap starts).

- :func:`caption_metrics` wraps pycocoevalcap (BLEU-1..4, CIDEr-D, ROUGE-L and, where Java runs, METEOR) on
  captions tokenised as described in :mod:`vlm.eval.tokenize` (PTB with Java, a documented rule without).
- :func:`vqa_accuracy` is the official VQAv2 accuracy for one question (see :mod:`vlm.eval.vqa_normalize`).
- :func:`retrieval_recall` gives image->text and text->image recall@k from a similarity matrix.
- :func:`perplexity` turns summed token negative log-likelihoods into a perplexity.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlm.eval.tokenize import default_tokenizer, java_available, tokenize
from vlm.eval.vqa_normalize import normalize_answer, strip_answer

log = logging.getLogger(__name__)

__all__ = ["caption_metrics", "caption_scores", "vqa_accuracy", "retrieval_recall", "perplexity", "CAPTION_METRICS"]

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "meteor")


def _check_caption_inputs(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> list[str]:
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"{len(missing)} prediction(s) have no references, e.g. {missing[:3]}")
    keys = [str(k) for k in predictions]
    if not keys:
        raise ValueError("no predictions to score")
    empty = [k for k in predictions if not [r for r in references[k] if r and r.strip()]]
    if empty:
        raise ValueError(f"{len(empty)} sample(s) have no non-empty reference caption, e.g. {empty[:3]}")
    bad = [k for k, v in predictions.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"predictions must be strings; {len(bad)} are not, e.g. {bad[:3]}")
    return keys


def caption_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str], *,
                   tokenizer: str | None = None, meteor: bool | None = None
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus-level and per-sample caption metrics.

    Only keys present in ``predictions`` are scored (each must have references). ``tokenizer``: ``ptb`` or
    ``simple`` (default: PTB when Java is present). ``meteor``: ``None`` = when Java is present.
    Returns ``(corpus, per_sample)`` where ``per_sample[key]`` has the per-image BLEU/CIDEr/ROUGE(/METEOR).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = _check_caption_inputs(references, predictions)
    method = tokenizer or default_tokenizer()
    gts = tokenize({str(k): [r for r in references[k] if r and r.strip()] for k in predictions}, method)
    res = tokenize({str(k): [v] for k, v in predictions.items()}, method)
    gts = {k: gts[k] for k in keys}
    res = {k: res[k] for k in keys}

    corpus: dict[str, float] = {}
    per: dict[str, dict[str, float]] = {k: {} for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its statistics
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"bleu{n + 1}"] = float(bleu[n])
        for k, s in zip(keys, bleu_each[n]):
            per[k][f"bleu{n + 1}"] = float(s)
    for name, scorer in (("cider", Cider()), ("rouge_l", Rouge())):
        score, each = scorer.compute_score(gts, res)
        corpus[name] = float(score)
        for k, s in zip(keys, each):
            per[k][name] = float(s)
    if meteor is None:
        meteor = java_available()
    if meteor:
        score, each = _meteor(gts, res)
        corpus["meteor"] = score
        for k, s in zip(keys, each):
            per[k]["meteor"] = s
    return corpus, per


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    """METEOR 1.5 through pycocoevalcap's Java wrapper; the Java process is stopped afterwards."""
    from pycocoevalcap.meteor.meteor import Meteor

    if not java_available():
        raise RuntimeError("METEOR needs Java (install a JRE, e.g. openjdk-17-jre-headless) or pass meteor=False")
    scorer = Meteor()
    try:
        score, each = scorer.compute_score(gts, res)
    finally:
        with contextlib.suppress(Exception):
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait(timeout=10)
    return float(score), [float(s) for s in each]


def caption_metrics(references: dict[str, list[str]], predictions: dict[str, str], *, tokenizer: str | None = None,
                    meteor: bool | None = None) -> dict[str, float]:
    """``bleu1..bleu4``, ``cider`` (CIDEr-D), ``rouge_l`` and, where Java is available, ``meteor``.

    Equal to what pycocoevalcap computes on the same tokens; see :mod:`vlm.eval.tokenize` for the tokeniser.
    """
    return caption_scores(references, predictions, tokenizer=tokenizer, meteor=meteor)[0]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQAv2 accuracy of one predicted answer against the human answers (normally ten).

    As the newest official evaluation (``vqaEval.py`` after the 2021 fix, see :mod:`vlm.eval.vqa_normalize`):
    all answers and the prediction are stripped; when the human answers are not all identical, they *and*
    the prediction are normalised (punctuation, number words -> digits, articles dropped, contractions).
    The score is the mean over the leave-one-out subsets of ``min(1, #matches among the others / 3)``.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    gts = [strip_answer(str(a)) for a in answers]
    pred = strip_answer(str(prediction))
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    matches = sum(a == pred for a in gts)
    # leaving out answer i: the others match (matches - [answer i matches])
    accs = [min(1.0, (matches - (a == pred)) / 3.0) for a in gts]
    return float(sum(accs) / len(accs))


def _ranks_pessimistic(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """For each row: how many negatives score at least as high as the best positive (ties count against)."""
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~positive).sum(axis=1)


def retrieval_recall(similarity: Any, ks: Sequence[int] = (1, 5, 10),
                     text_to_image: Sequence[int] | None = None) -> dict[str, float]:
    """Image->text and text->image recall@k from an ``[n_images, n_texts]`` similarity matrix.

    ``text_to_image[j]`` is the image index of text ``j`` (several captions per image); default: the
    identity, which needs a square matrix. Image->text counts a hit when any of the image's captions is in
    the top k; text->image when the caption's image is. Ties are broken pessimistically, so a model that
    scores everything equally gets recall k/n, never 1. Returns ``i2t_r{k}``, ``t2i_r{k}`` and ``mean_recall``.
    """
    sim = np.asarray(similarity.detach().cpu().float() if hasattr(similarity, "detach") else similarity, dtype=np.float64)
    if sim.ndim != 2 or 0 in sim.shape:
        raise ValueError(f"similarity must be a non-empty 2-D [n_images, n_texts] matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity contains NaN or infinite values")
    n_img, n_txt = sim.shape
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(f"similarity is {n_img}x{n_txt}: pass text_to_image for several captions per image")
        text_to_image = list(range(n_txt))
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if t2i.shape != (n_txt,) or t2i.min() < 0 or t2i.max() >= n_img:
        raise ValueError(f"text_to_image must list one image index in [0, {n_img}) per text ({n_txt})")
    positive = t2i[None, :] == np.arange(n_img)[:, None]  # [n_img, n_txt]
    orphans = np.flatnonzero(~positive.any(axis=1))
    if orphans.size:
        raise ValueError(f"{orphans.size} image(s) have no caption in text_to_image, e.g. {orphans[:3].tolist()}")
    rank_i2t = _ranks_pessimistic(sim, positive)
    rank_t2i = _ranks_pessimistic(sim.T, positive.T)
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"recall@k needs k >= 1, got {k}")
        out[f"i2t_r{k}"] = float((rank_i2t < k).mean())
        out[f"t2i_r{k}"] = float((rank_t2i < k).mean())
    out["mean_recall"] = float(np.mean([out[f"i2t_r{k}"] for k in ks] + [out[f"t2i_r{k}"] for k in ks]))
    return out


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """``exp(total negative log-likelihood / number of tokens)``, e.g. of held-out captions."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    if not math.isfinite(nll_sum):
        raise ValueError(f"negative log-likelihood is not finite: {nll_sum}")
    return float(math.exp(nll_sum / n_tokens))
