"""Checks that decide whether a raw sample is kept: captions, paths, and the rejection vocabulary.

Every rejection has one reason from ``REASONS``; the manifest counts them and keeps a few example refs.
"""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# reason -> what it means (shown in the manifest's "rejected_reasons").
REASONS: dict[str, str] = {
    "undecodable": "the image bytes could not be decoded (corrupt, truncated or not an image)",
    "too_small": "the image's short side is below min_side",
    "too_large": "the image has more than max_pixels pixels (decompression-bomb guard), or its download is "
                 "larger than download.max_bytes",
    "duplicate": "exact duplicate of an earlier image (content hash); its captions were merged into the kept one",
    "near_duplicate": "perceptual hash within near_duplicate_distance of an earlier image",
    "empty_caption": "caption missing, empty or whitespace only",
    "bad_caption": "caption is not text: invalid UTF-8, control characters, a non-string value, or no letter at "
                   "all (only digits, punctuation or symbols)",
    "caption_too_long": "caption longer than max_caption_chars (with long_captions=reject)",
    "missing_file": "the image (or its sidecar caption) does not exist or cannot be read",
    "unsafe_path": "the path escapes the dataset root (.., absolute, symlink, link member) or uses an unsupported scheme",
    "bad_record": "the input record itself is malformed (a JSONL line that is not a JSON object, a corrupt tar)",
    "download_failed": "the image URL could not be fetched: connection refused or reset, DNS, truncated body",
    "http_error": "the image URL answered with an HTTP error status (after the retries for 5xx/429)",
    "timeout": "the image URL did not answer within download.connect_timeout / read_timeout / total_timeout",
}
EXAMPLES_PER_REASON = 5

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


class Rejected(Exception):
    """A sample is rejected for ``reason`` (one of REASONS); ``detail`` says why in words."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class RejectionLog:
    """Counts by reason plus a few examples per reason (mergeable across workers)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def add(self, reason: str, ref: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append({"ref": ref, "detail": detail})

    def merge(self, other: dict[str, Any]) -> None:
        for reason, n in other.get("counts", {}).items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, exs in other.get("examples", {}).items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(exs[: max(0, EXAMPLES_PER_REASON - len(mine))])

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": {k: v for k, v in self.examples.items() if v}}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def clean_caption(raw: Any, max_chars: int, long_captions: str = "truncate") -> tuple[str, bool]:
    """Return ``(caption, truncated)`` or raise Rejected.

    Bytes must be valid UTF-8; text is NFC-normalised, whitespace collapsed; C0/C1 control characters
    (other than tab/newline/CR, which become spaces), lone surrogates and text without a single letter (in
    any script) are rejected as ``bad_caption``.
    """
    if raw is None or (isinstance(raw, float) and raw != raw):  # None / NaN
        raise Rejected("empty_caption", "no caption")
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected("bad_caption", f"invalid UTF-8 at byte {exc.start}") from None
    if not isinstance(raw, str):
        raise Rejected("bad_caption", f"caption is a {type(raw).__name__}, not text")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("bad_caption", "invalid UTF-8 (lone surrogate)") from None
    if raw.startswith("\ufeff"):
        raw = raw[1:]
    if _CONTROL.search(raw):
        raise Rejected("bad_caption", f"control character {_CONTROL.search(raw).group()!r}")
    text = _SPACE.sub(" ", unicodedata.normalize("NFC", raw)).strip()
    if not text:
        raise Rejected("empty_caption", "caption is empty or whitespace")
    if not any(ch.isalpha() for ch in text):
        raise Rejected("bad_caption", f"no letter in {text[:40]!r} (only digits, punctuation or symbols)")
    if len(text) <= max_chars:
        return text, False
    if long_captions == "reject":
        raise Rejected("caption_too_long", f"{len(text)} > {max_chars} characters")
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:  # cut at a word boundary when that loses little
        cut = cut[:space]
    return cut.rstrip(), True


def clean_captions(raw: Any, max_chars: int, long_captions: str = "truncate") -> tuple[list[str], int]:
    """One caption or a list of them -> (valid unique captions, number truncated); raise the first
    rejection when none is valid."""
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        raise Rejected("empty_caption", "empty caption list")
    out: list[str] = []
    truncated = 0
    first: Rejected | None = None
    for item in items:
        try:
            text, cut = clean_caption(item, max_chars, long_captions)
        except Rejected as exc:
            first = first or exc
            continue
        truncated += cut
        if text not in out:
            out.append(text)
    if not out:
        assert first is not None
        raise first
    return out, truncated


def safe_relpath(rel: str) -> str:
    """Normalise a member/relative path, or raise Rejected(unsafe_path) if it escapes its root."""
    if not rel or "\x00" in rel:
        raise Rejected("unsafe_path", f"bad path {rel!r}")
    p = rel.replace("\\", "/")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or "://" in p:
        raise Rejected("unsafe_path", f"absolute path or URI {rel!r}")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        raise Rejected("unsafe_path", f"{rel!r} escapes the dataset root")
    return norm


def is_url(ref: str) -> bool:
    return ref[:8].lower().startswith(("http://", "https://"))


def resolve_under(root: str, ref: str) -> str:
    """Resolve an image reference from a table/folder against ``root`` (local folder or s3:// prefix).

    ``s3://`` and ``http(s)://`` references are allowed as is (URLs are downloaded by :mod:`vlm.data.fetch`);
    relative paths must stay under ``root`` (after resolving symlinks for local roots); absolute local paths
    are allowed only inside ``root``.
    """
    ref = str(ref).strip()
    if ref.startswith("s3://") or is_url(ref):
        return ref
    if "://" in ref:
        raise Rejected("unsafe_path", f"unsupported URI scheme in {ref!r} (only relative paths, s3:// and http(s)://)")
    if root.startswith("s3://"):
        return root.rstrip("/") + "/" + safe_relpath(ref)
    root_real = os.path.realpath(root)
    path = ref if os.path.isabs(ref) else os.path.join(root, safe_relpath(ref))
    real = os.path.realpath(path)
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise Rejected("unsafe_path", f"{ref!r} resolves outside the dataset root {root}")
    return path
