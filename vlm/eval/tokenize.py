"""Caption tokenisation for the COCO caption metrics.

pycocoevalcap scores *tokenised* captions. The reference tokeniser is Stanford's PTB tokenizer (the
CoreNLP 3.4.1 jar that ships with pycocoevalcap, run with ``-preserveLines -lowerCase``), followed by
dropping the punctuation tokens in ``pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS``. It needs Java.

Without Java we use :func:`simple_tokenize`, a documented approximation of the same rule:

1. lower-case; newlines become spaces;
2. split the clitics PTB splits: ``n't`` (``isn't`` -> ``is n't``) and ``'s 're 've 'll 'd 'm``;
3. keep runs of letters/digits, joined by inner ``- . , / '`` (``black-and-white``, ``3.5``, ``e.g``);
4. drop every other character (all punctuation, brackets, quotes).

On ordinary captions both give the same tokens (tested); they differ on rare input such as brackets
(PTB keeps ``-lrb-``/``-rrb-`` tokens in lower-case mode) or a trailing period of an abbreviation.
``VLM_EVAL_TOKENIZER=simple`` forces the fallback even where Java is present.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_CLITICS = re.compile(r"(?<=[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:[-.,/'][a-z0-9]+)*")


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """Whether a working ``java`` is on PATH (needed by the PTB tokenizer and METEOR)."""
    exe = shutil.which("java")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def default_tokenizer() -> str:
    """``ptb`` where Java works, else ``simple``; ``VLM_EVAL_TOKENIZER`` overrides."""
    forced = os.environ.get("VLM_EVAL_TOKENIZER", "").strip().lower()
    if forced in ("ptb", "simple"):
        return forced
    return "ptb" if java_available() else "simple"


def simple_tokenize(text: str) -> str:
    """Tokenise one caption with the documented Java-free rule; returns space-joined tokens."""
    text = text.replace("\n", " ").replace("’", "'").lower()
    text = _CLITICS.sub(r" \1", text)
    return " ".join(_TOKEN.findall(text))


def ptb_tokenize_lines(lines: list[str]) -> list[str]:
    """Run the PTB tokenizer over ``lines`` (one caption each) exactly as pycocoevalcap does.

    Unlike ``pycocoevalcap``'s own wrapper this writes its temporary file to the system temp folder, so it
    also works where site-packages is read-only (container images).
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    cleaned = [" ".join(line.split()) for line in lines]  # PTB -preserveLines: one output line per input line
    todo = [i for i, line in enumerate(cleaned) if line]
    result = [""] * len(lines)
    if not todo:
        return result
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as tmp:
        tmp.write("\n".join(cleaned[i] for i in todo))
    try:
        proc = subprocess.run(["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                               "-lowerCase", tmp.name], capture_output=True, check=False)
    finally:
        os.unlink(tmp.name)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    out = proc.stdout.decode("utf-8").split("\n")
    punct = set(ptbtokenizer.PUNCTUATIONS)
    if len(out) < len(todo):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(todo)} captions")
    for line, i in zip(out, todo):
        result[i] = " ".join(w for w in line.rstrip().split(" ") if w not in punct)
    return result


def tokenize(captions: dict[str, list[str]], method: str | None = None) -> dict[str, list[str]]:
    """Tokenise ``{key: [caption, ...]}`` with ``method`` (``ptb``/``simple``; default: :func:`default_tokenizer`)."""
    method = method or default_tokenizer()
    if method == "simple":
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    if method != "ptb":
        raise ValueError(f"unknown tokenizer {method!r}; use 'ptb' or 'simple'")
    keys = [(k, len(v)) for k, v in captions.items()]
    flat = ptb_tokenize_lines([c for v in captions.values() for c in v])
    out: dict[str, list[str]] = {}
    i = 0
    for k, n in keys:
        out[k] = flat[i : i + n]
        i += n
    return out
