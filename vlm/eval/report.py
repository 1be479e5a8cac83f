"""The evaluation report: metric tables, plots and example images with their generated text.

Writes into a local folder: ``report.md`` (images as files under ``plots/`` and ``examples/``) and
``report.html`` (self-contained: images embedded, so it renders as a single kfp HTML artefact).
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CAPTION_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "meteor")


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
        fig, ax = plt.subplots(figsize=(6, 3))
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


def _examples(samples: list, results: dict[str, Any], out: Path, n: int) -> list[dict[str, Any]]:
    """Thumbnails of the first ``n`` samples with what the model said about them."""
    if n <= 0:
        return []
    (out / "examples").mkdir(parents=True, exist_ok=True)
    captions = {r["key"]: r for r in results.get("caption", [])}
    vqa: dict[str, list] = {}
    for r in results.get("vqa", []):
        vqa.setdefault(r["key"], []).append(r)
    rows = []
    for i, s in enumerate([s for s in samples if s.key in captions or s.key in vqa][:n]):
        thumb = s.image.copy()
        thumb.thumbnail((160, 160))
        rel = f"examples/{i:03d}.jpg"
        thumb.save(out / rel, format="JPEG", quality=85)
        c = captions.get(s.key)
        rows.append({"key": s.key, "image": rel,
                     "caption": c["prediction"] if c else None, "references": (c or {}).get("references", [])[:3],
                     "cider": c["scores"]["cider"] if c else None,
                     "qa": [(q["question"], q["prediction"], q["answers"][:3], q["accuracy"]) for q in vqa.get(s.key, [])[:3]]})
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _markdown(summary: dict[str, Any], plots: list, examples: list) -> str:
    lines = [f"# Evaluation of `{summary['model_uri']}`", "", f"- data: `{summary['data_uri']}` ({summary['format']})",
             f"- samples: {summary['n_samples']}; per task: " + ", ".join(f"{k} {v}" for k, v in summary["n"].items()),
             f"- generation: beam {summary['config']['num_beams']}, max {summary['config']['max_new_tokens']} new tokens",
             f"- caption tokenizer: {summary['tokenizer']}"]
    if summary["rejected"]:
        lines.append("- rejected inputs: " + ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()))
    if summary["skipped_tasks"]:
        lines.append("- skipped tasks (no usable samples): " + ", ".join(summary["skipped_tasks"]))
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["metrics"].items()]
    for title, rel in plots:
        lines += ["", f"## {title}", "", f"![{title}]({rel})"]
    if examples:
        lines += ["", "## Examples", "", "| image | generated | references / answers |", "|---|---|---|"]
        for e in examples:
            gen = [f"**caption:** {e['caption']}" if e["caption"] is not None else ""]
            gen += [f"**Q:** {q} **A:** {p} ({acc:.2f})" for q, p, _, acc in e["qa"]]
            ref = [" / ".join(e["references"])] + [" / ".join(a) for _, _, a, _ in e["qa"]]
            esc = lambda t: html.escape(t, quote=False).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines.append(f"| ![{e['key']}]({e['image']}) | {'<br>'.join(esc(g) for g in gen if g)} | "
                         f"{'<br>'.join(esc(r) for r in ref if r)} |")
    return "\n".join(lines) + "\n"


def _data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _html(summary: dict[str, Any], plots: list, examples: list, out: Path) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in summary["metrics"].items())
    info = [f"data: <code>{e(summary['data_uri'])}</code> ({e(summary['format'])})",
            f"samples: {summary['n_samples']}; " + ", ".join(f"{e(k)} {v}" for k, v in summary["n"].items()),
            f"beam {summary['config']['num_beams']}, caption tokenizer {e(summary['tokenizer'])}"]
    if summary["rejected"]:
        info.append("rejected inputs: " + e(", ".join(f"{k} {v}" for k, v in summary["rejected"].items())))
    if summary["skipped_tasks"]:
        info.append("skipped tasks: " + e(", ".join(summary["skipped_tasks"])))
    figs = "".join(f"<h2>{e(t)}</h2><img src='{_data_uri(out / rel)}' alt='{e(t)}'>" for t, rel in plots)
    ex_rows = []
    for x in examples:
        gen = ([f"<b>caption:</b> {e(x['caption'])}"] if x["caption"] is not None else []) + \
              [f"<b>Q:</b> {e(q)} <b>A:</b> {e(p)} ({acc:.2f}; answers: {e(', '.join(a))})" for q, p, a, acc in x["qa"]]
        refs = "<br>".join(e(r) for r in x["references"])
        ex_rows.append(f"<tr><td><img src='{_data_uri(out / x['image'])}' alt='{e(x['key'])}'></td>"
                       f"<td>{'<br>'.join(gen)}</td><td>{refs}</td></tr>")
    examples_html = ("<h2>Examples</h2><table><tr><th>image</th><th>generated</th><th>references</th></tr>"
                     + "".join(ex_rows) + "</table>") if ex_rows else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vlm evaluation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;vertical-align:top}</style></head><body>"
            f"<h1>Evaluation of <code>{e(summary['model_uri'])}</code></h1><ul>"
            + "".join(f"<li>{i}</li>" for i in info) + "</ul><h2>Metrics</h2><table><tr><th>metric</th><th>value"
            f"</th></tr>{rows}</table>{figs}{examples_html}</body></html>\n")


def write_report(summary: dict[str, Any], results: dict[str, Any], samples: list, out: Path,
                 n_examples: int = 8) -> dict[str, str]:
    """Write report.md + report.html (+ plots/, examples/) into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(summary, results, out)
    examples = _examples(samples, results, out, n_examples)
    (out / "report.md").write_text(_markdown(summary, plots, examples), encoding="utf-8")
    (out / "report.html").write_text(_html(summary, plots, examples, out), encoding="utf-8")
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html")}
