"""Answer normalisation of the official VQAv2 evaluation, as in its newest version.

Follows ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA at commit ``a013f00``
("Fixed processing answers bug", 2021-03-11), the version published VQAv2 numbers are compared against.
What that version does, and what older copies of the script (still vendored by many projects) did not:

- when the human answers of a question are not all identical, *both* the human answers and the prediction
  go through :func:`process_punctuation` and then :func:`process_digit_article` (before 2021 the answers got
  the punctuation step only, the prediction both steps always);
- when they are all identical, neither is normalised: only newlines/tabs become spaces and the ends are
  stripped (:func:`strip_answer`), so the prediction must match the answer as written;
- the punctuation set is ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` (the 2015 beta had ``:`` and
  ``'`` instead of ``{ } - !``); the contraction table uses plain apostrophes (typographic ones before 2016).

Quirks kept on purpose, so that our numbers match published ones: a mark is deleted when it touches a
space (or the text has a ``digit,digit`` group) and replaced by a space otherwise; periods not followed by
a digit are deleted, at most 32 of them (the official code passes ``re.UNICODE`` as the ``count`` argument
of ``re.sub``); only number words up to ``ten`` (and ``none``) become digits; ``a an the`` are dropped.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # 32, see the module docstring

# "written form -> official form", pairs separated by "|". Entries are as in the official table, including
# its odd ones ("somebody'd" -> "somebodyd", identity entries such as "let's").
_CONTRACTION_TABLE = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't
ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's
shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's
somethingd something'd|somethingd've something'd've|something'dve something'd've|somethingll something'll
thats that's|thered there'd|thered've there'd've|there'dve there'd've|therere there're|theres there's
theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're
whats what's|whatve what've|whens when's|whered where'd|wheres where's|whereve where've|whod who'd
whod've who'd've|who'dve who'd've|wholl who'll|whos who's|whove who've|whyll why'll|whyre why're|whys why's
wont won't|wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all
yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split(" ") for line in _CONTRACTION_TABLE.strip().splitlines() for pair in line.split("|"))


def strip_answer(text: str) -> str:
    """Newlines and tabs -> spaces, ends stripped: all an answer gets when the ten human answers agree."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation step."""
    out = text
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if glued or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions (the official second step)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Both official steps: what an answer becomes when the human answers disagree."""
    return process_digit_article(process_punctuation(strip_answer(answer)))
