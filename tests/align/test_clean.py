"""The deterministic cleaner and the filters: degenerate texts in, audited clean text out."""

from __future__ import annotations

import pytest

from vlm.align.clean import clean_description, is_cut_off, is_english, repetition_rate, split_sentences
from vlm.align.config import AlignConfig
from vlm.align.filters import apply_filters


def reasons(result) -> list[str]:
    return [c.reason for c in result.changes]


@pytest.mark.parametrize("text", [
    "The image shows a red circle on a white background. The circle is large and centered.",
    "A man in a blue jacket walks his dog along a beach at sunset. Waves roll onto the sand!",
    "It is 3.5 meters tall, e.g. a 4K TV of 10cm. The cat's toy is near Mr. Smith's car.",
    "Is the cup full? It is - a café au lait, very very hot (about 70°C), on a black & white table.",
])
def test_clean_text_is_left_intact(text):
    result = clean_description(text)
    assert result.text == text
    assert result.changes == []
    assert not result.rejected


def test_whitespace_runs_are_normalised():
    assert clean_description("  A red   circle.\n\nA blue square.  ").text == "A red circle. A blue square."


def test_repeated_sentences_are_removed_and_recorded():
    r = clean_description("The image shows a cat. The image shows a cat. the image shows a CAT! It is asleep on a sofa.")
    assert r.text == "The image shows a cat. It is asleep on a sofa."
    assert reasons(r) == ["repeated_sentence", "repeated_sentence"]
    assert r.changes[1].removed == "the image shows a CAT!"


def test_near_copy_sentences_are_removed():
    r = clean_description("A large red circle sits on a white table. A large red circle sits on the white table. Done here.")
    assert r.text == "A large red circle sits on a white table. Done here."
    assert reasons(r) == ["repeated_sentence"]


A = "There is a purple dog at the top of the image."
B = "The background is white."
C = "A small red circle sits at the bottom left."


@pytest.mark.parametrize("pattern", ["AAB", "ABAB", "AAABC"])
@pytest.mark.parametrize("glue", ["space", "newlines", "glued", "glued-lowercase"])
def test_a_sentence_after_a_repeat_survives_exactly_once(pattern, glue):
    """A repeated sentence goes; every other sentence stays once, however the sentences are joined
    ("...of the image.the background is white." used to lose its second sentence with the copy of A)."""
    said = {"A": A, "B": B, "C": C}
    if glue == "glued-lowercase":
        said = {k: v[0].lower() + v[1:] for k, v in said.items()}
    text = {"space": " ", "newlines": "\n\n"}.get(glue, "").join(said[ch] for ch in pattern)
    r = clean_description(text)
    assert r.text == " ".join(dict.fromkeys(said[ch] for ch in pattern))
    assert reasons(r) == ["repeated_sentence"] * (len(pattern) - len(set(pattern)))


@pytest.mark.parametrize("text, expected, removed", [
    # the copy of A and B in one unit (comma, semicolon, lower-case sentence glued on): it is not a near copy
    # of A (it says something new), only the repeated part goes
    (f"{A} {A[:-1]}, a yellow table is next to it.", f"{A} A yellow table is next to it.", "repeated_clause"),
    (f"{A} {A[:-1]}; the background is white.", f"{A} The background is white.", "repeated_clause"),
    (f"{A}{A}the background is white.", f"{A} the background is white.", "repeated_sentence"),
    (f"{A} {A} {A[:-1]}, a yellow table. {C}", f"{A} A yellow table. {C}", "repeated_sentence"),
])
def test_a_copy_joined_to_new_content_keeps_the_new_content(text, expected, removed):
    r = clean_description(text)
    assert r.text == expected
    assert removed in reasons(r) and all(A[:-1] in c.removed for c in r.changes)


def test_a_copy_with_one_word_more_is_still_a_near_copy():
    r = clean_description("A large red circle sits on a white table. A large red circle sits on the white table.")
    assert r.text == "A large red circle sits on a white table." and reasons(r) == ["repeated_sentence"]
    # the same words plus two new ones (Jaccard 10/12): it says something new, kept
    kept = "There is a purple dog at the top of the image. There is a purple dog at the top of the image with wheels."
    assert clean_description(kept).text == kept


@pytest.mark.parametrize("text,expected,removed", [
    ("A dog on the the the the grass.", "A dog on the grass.", "the the the"),
    ("A dog sits next to a tree next to a tree next to a tree.", "A dog sits next to a tree.",
     "next to a tree next to a tree."),
    ("It is a very very very big dog.", "It is a very big dog.", "very very"),
    ("The ball is red red red red red red red red red red", None, None),
])
def test_word_loops_collapse(text, expected, removed):
    r = clean_description(text)
    assert r.text == expected
    assert "word_loop" in reasons(r)
    if removed:
        assert r.changes[0].removed == removed


def test_two_copies_of_one_word_are_english():
    assert clean_description("It is a very very big dog.").text == "It is a very very big dog."


def test_non_english_sentences_are_removed():
    text = ("A man rides a bike. Le chat est sur la table avec une pomme. Der Hund ist sehr groß und schläft. "
            "这是一只猫。 Всё хорошо на улице. The sky is blue.")
    r = clean_description(text)
    assert r.text == "A man rides a bike. The sky is blue."
    assert reasons(r) == ["non_english"] * 4


def test_foreign_script_words_inside_an_english_sentence_are_dropped():
    r = clean_description("A cat 猫 sits on a mat near a window.")
    assert r.text == "A cat sits on a mat near a window."
    assert r.changes[0].reason == "non_english" and r.changes[0].removed == "猫"


@pytest.mark.parametrize("sentence,english", [
    ("A dog runs in the park.", True),
    ("Un perro corre en el parque con una pelota.", False),
    ("Il gatto è sul tavolo della cucina.", False),
    ("Ein Mann und eine Frau sind auf dem Bild.", False),
    ("El Niño and La Niña are climate patterns in the Pacific.", True),
    ("Привет, как дела?", False),
    ("12345", True),
])
def test_is_english(sentence, english):
    assert is_english(sentence) is english


def test_junk_characters_and_tokens_are_removed():
    r = clean_description("A blue square \ufffd\u200b on ☺☺ a green field!!!! @#$% near xkqzvbt a8f3k2 trees.")
    assert r.text == "A blue square on a green field! near trees."
    assert set(reasons(r)) == {"junk_chars", "junk_token"}
    removed = " ".join(c.removed for c in r.changes)
    for junk in ("\ufffd", "\u200b", "☺", "@#$", "xkqzvbt", "a8f3k2"):
        assert junk in removed


def test_special_tokens_and_role_leaks_are_removed():
    r = clean_description("<unk> A white horse </s> stands in a field.###Human: thanks ###Assistant: welcome")
    assert r.text == "A white horse stands in a field."
    assert reasons(r) == ["role_leak", "special_token", "special_token"]
    assert r.changes[0].removed.startswith("###Human")


def test_cut_off_ending_is_removed():
    r = clean_description("A red triangle sits in the middle. It is surrounded by")
    assert r.text == "A red triangle sits in the middle."
    assert reasons(r) == ["cut_off"]
    assert r.changes[0].removed == "It is surrounded by"


def test_cut_off_list_keeps_its_complete_clauses():
    r = clean_description("A red square at the top, a blue circle at the left, a green")
    assert r.text == "A red square at the top, a blue circle at the left."
    assert [c.to_dict() for c in r.changes] == [{"reason": "cut_off", "removed": "a green"}]
    # too little before the last comma: the whole cut-off sentence goes
    assert clean_description("Red, a blue circle at the").text is None


def test_repeated_clauses_of_a_list_loop_are_removed():
    r = clean_description("A red square at the top, a blue square at the bottom, a red square at the top, "
                          "and a blue square at the bottom, a green circle at the left.")
    assert r.text == "A red square at the top, a blue square at the bottom, a green circle at the left."
    assert [c.to_dict() for c in r.changes] == [
        {"reason": "repeated_clause", "removed": "a red square at the top,"},
        {"reason": "repeated_clause", "removed": "and a blue square at the bottom,"}]
    # a list whose last clause repeats ends on the clauses before it, with a full stop
    r = clean_description("A red square, a blue square, a red square")
    assert r.text == "A red square, a blue square."
    assert reasons(r) == ["repeated_clause"]
    # short clauses ("big, big") are not judged
    assert clean_description("It is big, big, and round.").changes == []


def test_glued_sentences_are_split_before_judging():
    r = clean_description("A black circle with a white center.A black circle with a white center.A black circle")
    assert r.text == "A black circle with a white center."
    assert reasons(r) == ["repeated_sentence", "cut_off"]
    assert clean_description("A red circle.A.A.A.A.").text == "A red circle."
    # decimals, abbreviations and initials are not sentence ends
    assert clean_description("It is 3.5 m tall, e.g. a pole.").changes == []


def test_dangling_sentence_is_incomplete():
    r = clean_description("A red triangle is on the. A green circle is next to it.")
    assert r.text == "A green circle is next to it."
    assert reasons(r) == ["incomplete_sentence"]


@pytest.mark.parametrize("text", ["", "   ", "###", "!!!! ???", "<unk></s>", "xkcdqz bcdfg", "A cat sits on the",
                                  "Le chat est sur la table avec une pomme.", None])
def test_empty_results_are_rejected(text):
    r = clean_description(text)
    assert r.text is None and r.rejected and r.reject_reason == "empty"


def test_mixed_degenerate_text_records_every_change():
    text = ("The picture shows a kitchen. The picture shows a kitchen. There is a table table table table in the "
            "middle @@@ ### extra turn")
    r = clean_description(text)
    assert r.text == "The picture shows a kitchen."
    assert reasons(r) == ["role_leak", "junk_chars", "repeated_sentence", "word_loop", "cut_off"]
    assert r.to_dict()["changes"][0] == {"reason": "role_leak", "removed": "### extra turn"}


def test_cleaning_is_deterministic_and_idempotent():
    text = "A cat. A cat. It sits on on on on a mat near the ##"
    first, second = clean_description(text), clean_description(text)
    assert first.to_dict() == second.to_dict()
    again = clean_description(first.text)
    assert again.text == first.text and again.changes == []


def test_repetition_rate():
    assert repetition_rate("a red circle on a white table") == 0.0
    loop = "the cat sat " * 10
    assert repetition_rate(loop) > 0.8
    assert repetition_rate("") == 0.0
    assert 0 < repetition_rate("a red ball and a red ball") < 0.5


def test_is_cut_off():
    assert not is_cut_off("A dog runs.")
    assert is_cut_off("A dog runs on the")
    assert is_cut_off("A dog runs on the.")
    assert is_cut_off("")
    assert not is_cut_off('He said "hello."')


def test_split_sentences():
    assert split_sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]


def test_filters_count_each_reason():
    cfg = AlignConfig(min_words=5, max_repetition=0.2, min_itc_score=0.5)
    assert apply_filters("A red circle sits on a white table near a window.", cfg, {"itc_score": 0.9}) == []
    assert apply_filters("A red circle.", cfg, {"itc_score": 0.9}) == ["too_short"]
    assert apply_filters("the cat sat " * 6, cfg, {"itc_score": 0.9}) == ["repetitive"]
    assert apply_filters("A red circle sits on a white table near a window.", cfg, {"itc_score": 0.1}) == ["low_itc"]
    assert apply_filters("A red circle sits on a white table near a window.", cfg, {}) == ["no_itc_score"]
    assert apply_filters(None, cfg) == ["empty"]
    assert apply_filters("A red circle sits on a white table.", AlignConfig(min_itc_score=None)) == []
