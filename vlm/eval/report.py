"""The evaluation report a person reads: summary, per question type, examples, plots, run details.

Written into a local folder as ``report.md`` (images as files under ``examples/`` and ``plots/``) and
``report.html`` (self-contained: images embedded, so it renders as one kfp HTML artefact or MLflow artefact).
Both render the same sections, built once as plain tables (:class:`Table`):

1. **Summary**: metric, value, baseline (text-only baselines of :mod:`vlm.eval.baselines`, when the data has a
   train split) and the change vs the current champion (when ``compare_to`` names a registered model with one);
2. **Per question type** (:mod:`vlm.eval.question_types`): questions, accuracy, exact match and the baselines;
3. **Examples**: each image with its questions, the human answers and the model's answer (and its caption
   with the references);
4. plots and the run details (data, counts, generation settings, rejected inputs).
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.eval.question_types import METRIC_PREFIX

log = logging.getLogger(__name__)

CAPTION_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "meteor")
LOWER_IS_BETTER = frozenset({"caption_perplexity"})


@dataclass(frozen=True)
class Img:
    """An image cell: a file under the report folder."""

    path: str
    alt: str


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str | Img]]
    notes: list[str] = field(default_factory=list)


def fmt(v: Any) -> str:
    """Numbers to 4 significant digits (``0.3333``, ``12.35``; ``<0.0001`` near 0), anything else as text."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    if isinstance(v, float) and 0 < abs(v) < 1e-4:
        return "<0.0001" if v > 0 else ">-0.0001"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def change(metric: str, value: float, reference: float) -> str:
    """``+0.0123 (better)``: the signed change and whether it is an improvement for this metric."""
    delta = value - reference
    if abs(delta) < 1e-12:
        return "±0 (same)"
    better = (delta < 0) if metric in LOWER_IS_BETTER else (delta > 0)
    return f"{delta:+.4g} ({'better' if better else 'worse'})"


# ------------------------------------------------------------------------------------------ sections
def _baseline_cell(metric: str, baselines: dict[str, Any]) -> str:
    vqa, cap = baselines.get("vqa"), baselines.get("caption")
    if vqa and metric in ("vqa_accuracy", "vqa_exact_match"):
        return (f"{fmt(vqa['majority'][metric])} majority answer \"{vqa['majority']['answer']}\"; "
                f"{fmt(vqa['text_only'][metric])} text-only lookup")
    if cap and metric in cap["metrics"]:
        return f"{fmt(cap['metrics'][metric])} constant caption"
    return ""


def summary_table(summary: dict[str, Any]) -> Table:
    champ = summary.get("champion")
    baselines = summary.get("baselines") or {}
    headers = ["metric", "value", "baseline (no image)"]
    if champ:
        headers.append(f"vs champion ({champ['name']} v{champ['version']})")
    rows: list[list[str | Img]] = []
    for metric, value in summary["metrics"].items():
        if metric.startswith(METRIC_PREFIX):
            continue  # in the per-question-type table
        row: list[str | Img] = [metric, fmt(value), _baseline_cell(metric, baselines)]
        if champ:
            ref = champ["metrics"].get(metric)
            row.append(change(metric, value, ref) if ref is not None else "")
        rows.append(row)
    notes = []
    if baselines:
        notes.append(f"Baselines never look at the image; computed from the train split "
                     f"({baselines['n_train_samples']} images).")
    if champ is None and (summary.get("config") or {}).get("compare_to"):
        notes.append(f"No champion of {summary['config']['compare_to']} to compare with yet.")
    return Table("Summary", headers, rows, notes)


def question_type_table(summary: dict[str, Any]) -> Table | None:
    types = summary.get("by_question_type") or {}
    if not types:
        return None
    vqa = (summary.get("baselines") or {}).get("vqa")
    headers = ["question type", "questions", "accuracy", "exact match"]
    if vqa:
        headers += ["majority answer", "text-only lookup"]
    rows: list[list[str | Img]] = []
    for qtype, v in types.items():
        row: list[str | Img] = [qtype, str(v["n"]), fmt(v["accuracy"]), fmt(v["exact_match"])]
        if vqa:
            row += [fmt(vqa["majority"]["by_question_type"].get(qtype)),
                    fmt(vqa["text_only"]["by_question_type"].get(qtype))]
        rows.append(row)
    return Table("Per question type", headers, rows)


def _thumbnail(sample, out: Path, index: int) -> str:
    thumb = sample.image.copy()
    thumb.thumbnail((160, 160))
    rel = f"examples/{index:03d}.jpg"
    (out / "examples").mkdir(parents=True, exist_ok=True)
    thumb.convert("RGB").save(out / rel, format="JPEG", quality=85)
    return rel


def examples_table(samples: list, results: dict[str, Any], out: Path, n: int, caption_instruction: str) -> Table | None:
    """The first ``n`` evaluated images; one row per question (and one for the caption), image in the first."""
    if n <= 0:
        return None
    captions = {r["key"]: r for r in results.get("caption", [])}
    questions: dict[str, list[dict]] = {}
    for r in results.get("vqa", []):
        questions.setdefault(r["key"], []).append(r)
    shown = [s for s in samples if s.key in captions or s.key in questions][:n]
    if not shown:
        return None
    rows: list[list[str | Img]] = []
    for i, sample in enumerate(shown):
        lines = []
        if sample.key in captions:
            c = captions[sample.key]
            lines.append([caption_instruction, " / ".join(c["references"][:3]), c["prediction"],
                          f"CIDEr {fmt(c['scores']['cider'])}"])
        for q in questions.get(sample.key, [])[:4]:
            lines.append([q["question"], " / ".join(dict.fromkeys(q["answers"]))[:120], q["prediction"],
                          ("✓ " if q["accuracy"] >= 1 else "✗ " if q["accuracy"] == 0 else "") + fmt(q["accuracy"])])
        image = Img(_thumbnail(sample, out, i), sample.key)
        rows += [[image if j == 0 else "", *line] for j, line in enumerate(lines)]
    return Table("Examples", ["image", "question", "answer", "prediction", "score"], rows)


def details(summary: dict[str, Any]) -> list[str]:
    cfg = summary["config"]
    lines = [f"data: {summary['data_uri']} ({summary['format']}, split {cfg.get('split')})",
             f"samples: {summary['n_samples']}; per task: " + ", ".join(f"{k} {v}" for k, v in summary["n"].items()),
             f"generation: beam {cfg['num_beams']}, at most {cfg['max_new_tokens']} new tokens "
             f"({cfg.get('vqa_max_new_tokens')} for answers); caption tokenizer {summary['tokenizer']}"]
    if summary["rejected"]:
        lines.append("rejected inputs: " + ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()))
    if summary["skipped_tasks"]:
        lines.append("skipped tasks (no usable samples): " + ", ".join(summary["skipped_tasks"]))
    return lines


def _plots(summary: dict[str, Any], results: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """Save the plots; returns (title, relative path) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    m = summary["metrics"]
    (out / "plots").mkdir(parents=True, exist_ok=True)

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / "plots" / name, dpi=90)
        plt.close(fig)
        made.append((title, f"plots/{name}"))

    caption = [(k, m[k]) for k in CAPTION_KEYS if k in m]
    if caption:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([k for k, _ in caption], [v for _, v in caption], color="#4c72b0")
        ax.set_title("caption metrics")
        save(fig, "caption_metrics.png", "Caption metrics")
        ciders = [r["scores"]["cider"] for r in results.get("caption", [])]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(ciders, bins=min(20, max(5, len(ciders) // 2)), color="#55a868")
        ax.set_xlabel("CIDEr-D per image")
        ax.set_ylabel("images")
        save(fig, "cider_hist.png", "Per-image CIDEr-D")
    vqa = {k: v for k, v in m.items() if k.startswith("vqa_")}
    if vqa:
        fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(vqa))))
        ax.barh(list(vqa), list(vqa.values()), color="#c44e52")
        ax.set_xlim(0, 1)
        ax.set_title("VQA accuracy")
        save(fig, "vqa.png", "VQA accuracy")
    ret = {k[len("retrieval_"):]: v for k, v in m.items() if k.startswith("retrieval_") and k != "retrieval_mean_recall"}
    if ret:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(list(ret), list(ret.values()), color="#8172b2")
        ax.set_ylim(0, 1)
        ax.set_title("retrieval recall@k")
        save(fig, "retrieval.png", "Retrieval recall@k")
    return made


# ------------------------------------------------------------------------------------------ rendering
def _md_cell(cell: str | Img) -> str:
    if isinstance(cell, Img):
        return f"![{cell.alt}]({cell.path})"
    return html.escape(cell, quote=False).replace("|", "\\|").replace("\n", " ")


def markdown(title: str, tables: list[Table], plots: list[tuple[str, str]], info: list[str]) -> str:
    lines = [f"# {title}", ""]
    for t in tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
        lines += [""] + [f"_{n}_" for n in t.notes] + ([""] if t.notes else [])
    for name, rel in plots:
        lines += [f"## {name}", "", f"![{name}]({rel})", ""]
    lines += ["## Run", ""] + [f"- {i}" for i in info]
    return "\n".join(lines) + "\n"


def _data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def html_page(title: str, tables: list[Table], plots: list[tuple[str, str]], info: list[str], out: Path) -> str:
    e = html.escape

    def cell(c: str | Img, tag: str = "td") -> str:
        if isinstance(c, Img):
            return f"<{tag}><img src='{_data_uri(out / c.path)}' alt='{e(c.alt)}'></{tag}>"
        return f"<{tag}>{e(c)}</{tag}>"

    body = [f"<h1>{e(title)}</h1>"]
    for t in tables:
        slug = t.title.lower().replace(" ", "-")
        body.append(f"<h2>{e(t.title)}</h2><table id='{slug}'><tr>{''.join(cell(h, 'th') for h in t.headers)}</tr>"
                    + "".join(f"<tr>{''.join(cell(c) for c in row)}</tr>" for row in t.rows) + "</table>")
        body += [f"<p><em>{e(n)}</em></p>" for n in t.notes]
    body += [f"<h2>{e(name)}</h2><img src='{_data_uri(out / rel)}' alt='{e(name)}'>" for name, rel in plots]
    body.append("<h2>Run</h2><ul>" + "".join(f"<li>{e(i)}</li>" for i in info) + "</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + e(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
            "th{background:#f4f4f4}</style></head><body>" + "".join(body) + "</body></html>\n")


def write_report(summary: dict[str, Any], results: dict[str, Any], samples: list, out: Path,
                 n_examples: int = 8) -> dict[str, str]:
    """Write report.md + report.html (+ examples/, plots/) into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"Evaluation of {summary['model_uri']}"
    instruction = summary["config"].get("caption_instruction", "describe")
    tables = [t for t in (summary_table(summary), question_type_table(summary),
                          examples_table(samples, results, out, n_examples, instruction)) if t is not None]
    plots = _plots(summary, results, out)
    info = details(summary)
    (out / "report.md").write_text(markdown(title, tables, plots, info), encoding="utf-8")
    (out / "report.html").write_text(html_page(title, tables, plots, info, out), encoding="utf-8")
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html")}
