"""Answer extraction and scoring on hand-written generations, one block per answer format."""

from __future__ import annotations

import pytest

from modetune.evaluation.extraction import (
    extract_answer,
    extract_label,
    extract_letter,
    extract_number,
    is_correct,
    score_generation,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42.0),
        ("She has 5 apples, then 3 more: 5 + 3 = 8", 8.0),  # the LAST number
        ("The temperature dropped to -15 degrees.", -15.0),  # negative
        ("Each costs 0.6 dollars", 0.6),  # decimal
        ("He earned $1,234.50 in total.", 1234.5),  # thousands separator
        ("Population: 1,000,000", 1000000.0),
        ("The answer is 7.", 7.0),  # trailing period is not part of the number
        ("I do not know.", None),  # no number at all
        ("", None),
        ("x = 3.\nSo 3 - 5 = -2", -2.0),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_extract_number_quirks_match_llm_adapters():
    # commas are removed before matching, so a list of numbers merges (as upstream)
    assert extract_number("options 1,2,3") == 123.0
    # a bare leading-dot decimal reads as its digits (the upstream pattern needs a leading digit)
    assert extract_number("about .5") == 5.0


@pytest.mark.parametrize(
    ("task", "text", "gold", "correct"),
    [
        ("gsm8k", "So the answer is 576.", "576.0", True),
        ("gsm8k", "The answer is 576.0004", "576.0", True),  # within 0.001
        ("gsm8k", "The answer is 576.01", "576.0", False),
        ("gsm8k", "It needs 1,152 tiles", "1152.0", True),
        ("mawps", "The difference is 1.8333", "1.8333333333333335", True),
        ("mawps", "The difference is 1.83", "1.8333333333333335", False),
        ("mawps", "the number is -15", "-15.0", True),
        ("addsub", "There are 4 crayons.", "4", True),
        ("singleeq", "They served 0.6 loaves", "0.6", True),
        ("svamp", "No idea.", "8.0", False),
    ],
)
def test_numeric_scoring(task, text, gold, correct):
    prediction, ok = score_generation(task, text, gold)
    assert ok is correct
    if "idea" in text:
        assert prediction is None


def test_numeric_prediction_is_a_clean_string():
    assert extract_answer("gsm8k", "576.0 tiles") == "576"
    assert extract_answer("gsm8k", "-2.5") == "-2.5"
    assert extract_answer("gsm8k", "9" * 400) is not None  # overflows to inf, does not crash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("(B) 1000", "B"),
        ("E", "E"),
        ("Answer: B", "A"),  # upstream quirk: the first capital A-E anywhere ("Answer")
        ("Each option is wrong", "E"),
        ("the answer is c", None),  # lower case does not count
        ("no letter here", None),
    ],
)
def test_extract_letter(text, expected):
    assert extract_letter(text) == expected
    assert extract_answer("aqua", text) == expected


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "false, it is not true", "false"),  # first occurrence wins
        ("boolq", "The answer is True.", None),  # case-sensitive, like upstream
        ("boolq", "that is untrue", "true"),  # substring match, like upstream
        ("piqa", "solution2 is better than solution1", "solution2"),
        ("piqa", "Solution1", None),
        ("arc_easy", "the correct answer is answer3", "answer3"),
        ("arc_challenge", "answer1 or answer4, probably answer4", "answer1"),
        ("openbookqa", "answer5", "answer5"),
        ("siqa", "I think answer2.", "answer2"),
        ("winogrande", "option2", "option2"),
        ("hellaswag", "the correct answer is ending4", "ending4"),
        ("hellaswag", "ending5", None),  # not a label of the task
        ("piqa", "", None),
    ],
)
def test_extract_label(task, text, expected):
    assert extract_answer(task, text) == expected


def test_label_scoring():
    assert score_generation("boolq", "the correct answer is false", "false") == ("false", True)
    assert score_generation("piqa", "solution1", "solution2") == ("solution1", False)
    assert score_generation("arc_easy", "I cannot tell", "answer1") == (None, False)
    assert is_correct("aqua", "B", "B")
    assert not is_correct("aqua", None, "B")


def test_longer_label_preferred_at_same_position():
    assert extract_label("answer10", ["answer1", "answer10"]) == "answer10"
