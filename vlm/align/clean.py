"""Deterministic cleaning of generated image descriptions (MiniGPT-4 stage two).

MiniGPT-4's stage-one model writes repetitive, fragmented text. :func:`clean_description` repairs what a
rule can repair and records every edit, so a curated set can be audited. Rules, in order:

1. ``role_leak``: cut everything from the first ``###`` (the model started a new ``###Human:`` turn).
2. ``special_token``: drop special/template tokens (``<unk>``, ``</s>``, ``<|im_end|>``, ``<ImageHere>``...).
3. ``junk_chars``: drop control, zero-width, private-use and replacement characters, emoji/symbols and
   runs of repeated punctuation (``!!!``, ``....``, ``@#$%``) - letters, digits and ordinary punctuation stay.
4. ``junk_token``: drop tokens that are not words: 5+ letters without a vowel (``xkcdqz``), 25+ letter runs,
   tokens that alternate letters and digits 3+ times (``a8f3k2``).
5. ``word_loop``: collapse an n-gram repeated back to back - a single word 3+ times (``very very very``;
   "very very" is English), a 2-8 word phrase 2+ times (``on the table on the table``).
6. Sentences are split at ``.!?`` followed by space, or glued to the next sentence (``left.A white``,
   ``left.the circle``: a capital or a common sentence-opening word after the mark).
   Then per sentence: ``non_english`` (see :func:`is_english`), ``meaningless`` (no word of 2+ letters),
   ``repeated_sentence`` (same words as an earlier kept sentence, ignoring case and punctuation, or a
   near copy: token-set Jaccard >= 0.8 with 4+ tokens and at most one word the earlier sentence lacks, so
   a copy that goes on with something new is not a near copy), ``repeated_clause`` (a comma/semicolon-
   separated clause of 3+ words that repeats an earlier clause or one-clause sentence of the description:
   the list loops of "a red square at the top, a blue square at the bottom, a red square at the top"),
   ``incomplete_sentence`` (ends on a word no English sentence ends on: "the", "and", "of"...),
   ``cut_off`` (the last sentence lacks ``.!?``: its unfinished tail after the last complete clause is cut
   and a full stop added when 3+ words remain, "a red square, a blue" -> "a red square."; otherwise the
   whole sentence goes).
7. The result is rejected (``text`` None, ``reject_reason`` "empty") when nothing is left.

Text that breaks no rule is returned unchanged apart from whitespace, which is normalised: runs become one
space and a sentence glued to the previous one gets its space back.

Non-English rule (no model, no dependency): a sentence is not English when more than 30% of its letters
belong to a non-Latin script, when more than 15% of its letters carry diacritics, or when it has at least
two function words of French/Spanish/Italian/Portuguese/German/Dutch that are not English words and more
of those than English function words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

__all__ = ["Change", "CleanResult", "clean_description", "is_english", "repetition_rate", "is_cut_off",
           "split_sentences", "word_count"]


@dataclass(frozen=True)
class Change:
    """One edit: which rule fired and the text it removed."""

    reason: str
    removed: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "removed": self.removed}


@dataclass
class CleanResult:
    original: str
    text: str | None
    changes: list[Change] = field(default_factory=list)
    reject_reason: str | None = None

    @property
    def rejected(self) -> bool:
        return self.text is None

    @property
    def reasons(self) -> list[str]:
        """Distinct change reasons in order of first appearance."""
        return list(dict.fromkeys(c.reason for c in self.changes))

    def to_dict(self) -> dict:
        return {"text": self.text, "reject_reason": self.reject_reason,
                "changes": [c.to_dict() for c in self.changes]}


# ------------------------------------------------------------------------------------- word lists
ENGLISH_FUNCTION_WORDS = frozenset("""
a an the and or but of in on at to for with from by as is are was were be been being it its this that these
those there here which who whom whose what where when while has have had do does did not no can could will
would should may might must shall some any each every all both either neither than then so very also into onto
over under above below behind between near next beside around through about against along across up down out
off he she they we you i his her their our your my him them us me one two three image picture photo shows
""".split())

# Function words of other Latin-script languages that are not English words (or not common ones).
FOREIGN_FUNCTION_WORDS = frozenset("""
le la les un une des du et est sont dans sur avec pour pas qui que une cette ces il elle ils nous vous
el los las del y en es con por para una uno como pero muy está están esta este estos hay
il lo gli della delle di che è sono nel nella con per una questo questa molto anche
o os da das dos não com uma isso está são muito também
der die das und ist sind ein eine einen dem den mit von zu auf nicht ich sie wir ihr auch noch sehr
het een en van zijn niet ik wij met voor ook maar naar
""".split()) - ENGLISH_FUNCTION_WORDS

# A sentence ending on one of these was cut mid-phrase ("a cat sitting on the.").
DANGLING_END_WORDS = frozenset("a an the and or but of with from to its their whose very".split())

SPECIAL_TOKEN_RE = re.compile(
    r"<\|[^|<>]{1,40}\|>"                          # <|im_end|>, <|endoftext|>
    r"|</?s>|<unk>|<pad>|<mask>|\[(?:PAD|UNK|CLS|SEP|MASK)\]"
    r"|</?Img>|<ImageHere>|</?image>|<image_\d+>"
)
ROLE_LEAK_RE = re.compile(r"###")
REPEATED_PUNCT_RE = re.compile(r"([^\w\s])(?:\s*\1){2,}")  # "!!!", ". . .", "----"
SYMBOL_RUN_RE = re.compile(r"(?<!\S)[^\w\s]{2,}(?!\S)")    # a standalone run of 2+ symbols: "@#$%", "*&"
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[。！？])\s*")
# "at the top left.A white ...", "at the top left.the circle ..." (not "e.g.the", "3.5", "photo.jpg")
GLUED_SENTENCE_RE = re.compile(
    r"(?<=[a-z]{2}[.!?])(?=[A-Z]|(?:the|a|an|there|it|its|this|these|they|in|on|at|and|but)\b)")
CLAUSE_SPLIT_RE = re.compile(r"(?<=[,;])\s+")
LEADING_CONJUNCTION = frozenset({"and", "or", "but", "then"})
TERMINAL_RE = re.compile(r"[.!?。！？][\"')\]]*$")
ALLOWED_PUNCT = set(".,;:!?'\"()[]-–—/%&+°’“”。！？")
KEEP_ALONE = {"-", "–", "—", "&"}  # punctuation-only tokens that stand alone in English
VOWELS = set("aeiouyAEIOUY")


# ------------------------------------------------------------------------------------- helpers
def word_count(text: str | None) -> int:
    return len(WORD_RE.findall(text or ""))


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_SPLIT_RE.split(text.strip()) if s.strip()]


def repetition_rate(text: str | None, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram (rep-n): 0 = none, near 1 = one loop."""
    words = _words(text or "")
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_cut_off(text: str | None) -> bool:
    """True when a text stops mid-sentence: no final ``.!?`` or a dangling last word ("... on the.")."""
    text = (text or "").strip()
    if not text:
        return True
    if not TERMINAL_RE.search(text):
        return True
    words = _words(text)
    return bool(words) and words[-1] in DANGLING_END_WORDS


def _script_counts(text: str) -> tuple[int, int, int]:
    """(letters, non-Latin letters, Latin letters with diacritics)."""
    letters = non_latin = accented = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        name = unicodedata.name(ch, "")
        if not name.startswith("LATIN"):
            non_latin += 1
        elif ord(ch) > 127:
            accented += 1
    return letters, non_latin, accented


def is_english(sentence: str) -> bool:
    """The non-English rule of the module docstring (script share, diacritics, function-word vote)."""
    letters, non_latin, accented = _script_counts(sentence)
    if letters == 0:
        return True  # nothing to judge; the "meaningless" rule handles it
    if non_latin / letters > 0.3 or accented / letters > 0.15:
        return False
    words = _words(sentence)
    foreign = sum(w in FOREIGN_FUNCTION_WORDS for w in words)
    english = sum(w in ENGLISH_FUNCTION_WORDS for w in words)
    return not (foreign >= 2 and foreign > english)


def _drop_foreign_script_words(sentence: str, record) -> str:
    """In a mostly Latin sentence, drop words written in another script (recorded as ``non_english``)."""
    letters, non_latin, _ = _script_counts(sentence)
    if not non_latin or non_latin / letters > 0.3:
        return sentence  # nothing to drop, or the whole sentence is foreign (judged by is_english)
    out = []
    for tok in sentence.split():
        t_letters, t_non_latin, _ = _script_counts(tok)
        if t_non_latin and t_non_latin / t_letters > 0.5:
            record("non_english", tok)
            tail = re.search(r"[.!?。！？]+$", tok)
            if tail and out:
                out[-1] = out[-1].rstrip(",;:") + "."
        else:
            out.append(tok)
    return " ".join(out)


def _is_junk_token(token: str) -> bool:
    core = token.strip("".join(ALLOWED_PUNCT))
    if not core:
        return False
    letters = [c for c in core if c.isalpha()]
    if core.isalpha():
        if len(core) >= 25:
            return True
        if len(core) >= 5 and all(c.isascii() for c in core) and not any(c in VOWELS for c in core):
            return True
        return False
    if letters and any(c.isdigit() for c in core):
        kinds = ["d" if c.isdigit() else "a" if c.isalpha() else "o" for c in core]
        switches = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b and "o" not in (a, b))
        return switches >= 3
    return False


def _is_junk_char(ch: str) -> bool:
    if ch.isalnum() or ch.isspace() or ch in ALLOWED_PUNCT:
        return False
    return True  # control, format (zero-width), private use, replacement char, symbols, emoji...


def _collapse_loops(words: list[str], max_n: int = 8) -> tuple[list[str], list[str]]:
    """Collapse back-to-back repeats of an n-gram; returns (kept tokens, removed phrases)."""
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        for n in range(1, max_n + 1):
            min_reps = 3 if n == 1 else 2
            i = 0
            out: list[str] = []
            while i < len(words):
                gram = [_norm_token(w) for w in words[i : i + n]]
                if len(gram) == n and all(gram):
                    reps = 1
                    while [_norm_token(w) for w in words[i + reps * n : i + (reps + 1) * n]] == gram:
                        reps += 1
                    if reps >= min_reps:
                        out.extend(words[i : i + n])
                        # keep the final copy's trailing punctuation ("very very very." -> "very.")
                        last = words[i + reps * n - 1]
                        if last != out[-1]:
                            out[-1] = last
                        removed.append(" ".join(words[i + n : i + reps * n]))
                        i += reps * n
                        changed = True
                        continue
                out.append(words[i])
                i += 1
            words = out
    return words, removed


def _norm_token(token: str) -> str:
    return "".join(c for c in token.lower() if c.isalnum())


def _sentence_key(sentence: str) -> tuple[str, ...]:
    return tuple(_words(sentence))


def _clause_key(clause: str) -> tuple[str, ...]:
    words = _words(clause)
    while words and words[0] in LEADING_CONJUNCTION:
        words = words[1:]
    return tuple(words)


def _drop_repeated_clauses(sentence: str, seen: set[tuple[str, ...]], record) -> str:
    """Drop clauses (split at ``,``/``;``) of 3+ words already said in this description; ``seen`` grows.

    A sentence whose last clause goes ends with a full stop: the clauses left are complete ones; one whose
    first clause goes starts with a capital."""
    clauses = CLAUSE_SPLIT_RE.split(sentence)
    if len(clauses) == 1:
        seen.add(_clause_key(sentence))  # a later "<this sentence>, <more>" repeats it
        return sentence
    out: list[str] = []
    for clause in clauses:
        key = _clause_key(clause)
        if len(key) >= 3 and key in seen:
            record("repeated_clause", clause)
            continue
        seen.add(key)
        out.append(clause)
    if out and len(out) < len(clauses) and out[-1] is not clauses[-1]:
        end = TERMINAL_RE.search(clauses[-1])
        out[-1] = out[-1].rstrip(",;") + (end.group(0) if end else ".")
    if out and out[0] is not clauses[0]:  # the sentence now starts with its second clause
        out[0] = out[0][:1].upper() + out[0][1:]
    return " ".join(out)


def _complete_clauses(sentence: str) -> tuple[str, str] | None:
    """A cut-off sentence trimmed to its last complete clause: (kept + ".", removed tail), or None."""
    cut = max(sentence.rfind(","), sentence.rfind(";"))
    if cut <= 0:
        return None
    head, tail = sentence[:cut].rstrip(), sentence[cut + 1 :].strip()
    words = _words(head)
    if len(words) < 3 or words[-1] in DANGLING_END_WORDS:
        return None
    return head + ".", tail


def _near_copy(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """``a`` (a new sentence) says what ``b`` (an earlier one) said: same words, or nearly the same
    (token-set Jaccard >= 0.8) and at most one word of its own. The last condition keeps "<copy of b>,
    <something new>" (a repeat with the next sentence glued to it) from counting as a copy."""
    if a == b:
        return True
    if len(a) < 4 or len(b) < 4:
        return False
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) >= 0.8 and len(sa - sb) <= 1


# ------------------------------------------------------------------------------------- the cleaner
def clean_description(text: str | None) -> CleanResult:
    """Clean one generated description; see the module docstring for the rules.

    ``.text`` is None (and ``.reject_reason`` set) when nothing usable is left; ``.changes`` lists every
    removal with its reason.
    """
    original = text if isinstance(text, str) else ""
    changes: list[Change] = []

    def record(reason: str, removed: str) -> None:
        removed = removed.strip()
        if removed:
            changes.append(Change(reason, removed))

    work = unicodedata.normalize("NFC", original)
    m = ROLE_LEAK_RE.search(work)
    if m:
        record("role_leak", work[m.start() :])
        work = work[: m.start()]
    for tok in SPECIAL_TOKEN_RE.findall(work):
        record("special_token", tok)
    work = SPECIAL_TOKEN_RE.sub(" ", work)

    junk = "".join(ch for ch in work if _is_junk_char(ch))
    if junk:
        record("junk_chars", junk)
        work = "".join(" " if _is_junk_char(ch) else ch for ch in work)
    for m2 in REPEATED_PUNCT_RE.finditer(work):
        # "..." as an ellipsis or "!!!" become one mark; keep the first
        record("junk_chars", m2.group(0)[1:])
    work = REPEATED_PUNCT_RE.sub(r"\1", work)
    for m3 in SYMBOL_RUN_RE.finditer(work):
        record("junk_chars", m3.group(0))
    work = SYMBOL_RUN_RE.sub(" ", work)

    tokens = []
    for tok in work.split():
        if _is_junk_token(tok):
            record("junk_token", tok)
            # keep sentence punctuation the token carried ("qwrtzp." ends a sentence)
            tail = re.search(r"[.!?。！？]+$", tok)
            if tail and tokens:
                tokens[-1] = tokens[-1].rstrip(",;:") + tail.group(0)
        elif not any(c.isalnum() for c in tok) and tok not in KEEP_ALONE:
            record("junk_chars", tok)
        else:
            tokens.append(tok)

    kept: list[str] = []
    seen: list[tuple[str, ...]] = []
    seen_clauses: set[tuple[str, ...]] = set()
    sentences = split_sentences(GLUED_SENTENCE_RE.sub(" ", " ".join(tokens)))
    for idx, sentence in enumerate(sentences):
        words = sentence.split()
        words, loops = _collapse_loops(words)
        for phrase in loops:
            record("word_loop", phrase)
        sentence = _drop_foreign_script_words(" ".join(words), record)
        words = _words(sentence)
        if not any(len(w) >= 2 for w in words):
            record("meaningless", sentence)
            continue
        if not is_english(sentence):
            record("non_english", sentence)
            continue
        key = _sentence_key(sentence)
        if any(_near_copy(key, prev) for prev in seen):
            record("repeated_sentence", sentence)
            continue
        sentence = _drop_repeated_clauses(sentence, seen_clauses, record)
        words = _words(sentence)
        if not words:
            continue
        last = idx == len(sentences) - 1
        if last and not TERMINAL_RE.search(sentence):
            trimmed = _complete_clauses(sentence)
            if trimmed is None:
                record("cut_off", sentence)
                continue
            sentence, tail = trimmed
            record("cut_off", tail)
            words = _words(sentence)
        if words[-1] in DANGLING_END_WORDS:
            record("incomplete_sentence", sentence)
            continue
        seen.append(key)
        kept.append(sentence)

    result = " ".join(kept).strip()
    if not result:
        return CleanResult(original, None, changes, reject_reason="empty")
    return CleanResult(original, result, changes)
