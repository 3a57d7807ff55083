"""MathQA as a named task, and custom tasks (--task NAME --answer-type ...) for any LLM-Adapters-format file."""

from __future__ import annotations

import json

import pytest

from modetune.cli import main
from modetune.errors import ConfigError
from modetune.evaluation.extraction import score_generation
from modetune.evaluation.tasks import custom_task, get_task, infer_labels, load_task_examples, parse_choices
from tests.evaluation.conftest import mc_record, write_json

# the three layouts of LLM-Adapters' dataset/mathqa/test.json options
MATHQA = [
    ("a shopkeeper sold an article at a discount of 5 % . what is the profit ? The options: A ) 38 , B ) 27.675 , "
     "C ) 30 , D ) DAtA inADEquAtE , E ) nonE oF thEsE", "A", ["38", "27.675", "30", "DAtA inADEquAtE", "nonE oF thEsE"]),
    ("find the ratio of their bases . The options: ['A ) 2 : 3', 'B ) 4 : 5', 'C ) 16 : 9', 'D ) 7 : 9', 'E ) 8 : 5']",
     "C", ["2 : 3", "4 : 5", "16 : 9", "7 : 9", "8 : 5"]),
    ("when will the owner over take the thief ? The options: A ) A ) 2 , B ) B ) 5 , C ) C ) 7 , D ) D ) 5 , "
     "E ) E ) 8", "E", ["2", "5", "7", "5", "8"]),
]  # fmt: skip


def test_mathqa_options_in_every_upstream_layout(tmp_path):
    assert get_task("MathQA").name == "mathqa" and get_task("math_qa").answer_type == "letter"
    for instruction, _, texts in MATHQA:
        choices = parse_choices("mathqa", instruction)
        assert [c.label for c in choices] == list("ABCDE")
        assert [c.text for c in choices] == texts
    path = write_json(tmp_path / "mathqa" / "test.json",
                      [{"instruction": i, "input": "", "output": "", "answer": a} for i, a, _ in MATHQA])  # fmt: skip
    examples = load_task_examples("mathqa", path, with_choices=True)
    assert [e.gold for e in examples] == ["A", "C", "E"]
    assert score_generation("mathqa", "The answer is C ) 16 : 9", "C") == ("C", True)


def test_custom_task_specs():
    number = custom_task("my_math", "number")
    assert number.answer_type == "number" and not number.multiple_choice
    assert get_task("my_math") is number
    letter = custom_task("my_letters", "letter", ["a", "b", "c"])
    assert letter.labels == ("A", "B", "C") and letter.choice_marker == "aqua"
    enumerated = custom_task("my_mc", "label", ["answer1", "answer2", "answer3"])
    assert enumerated.choice_marker == "Answer"
    free = custom_task("my_yesno", "label", ["yes", "no"])
    assert [c.text for c in parse_choices(free, "Is it?")] == ["yes", "no"]
    with pytest.raises(ConfigError, match="built-in"):
        custom_task("gsm8k", "number")
    with pytest.raises(ConfigError, match="at least two labels"):
        custom_task("my_bad", "label", ["x"])
    with pytest.raises(ConfigError, match="answer-type"):
        custom_task("my_bad", "float")


def test_cli_custom_label_task_reads_labels_from_the_file(tmp_path, tiny_model_dir):
    records = [
        mc_record("Please choose the correct answer to the question: ", "Choice", ["red", "green", "blue"], i % 3,
                  f"Which colour is number {i}?")
        for i in range(6)
    ]  # fmt: skip
    path = write_json(tmp_path / "colours.json", records)
    assert infer_labels(path) == ["choice1", "choice2", "choice3"]
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_model_dir), "--task", "colours", "--answer-type", "label", "--data",
                 str(path), "--scoring", "loglikelihood", "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["colours"]["n"] == 6 and results["tasks"]["colours"]["category"] == "custom"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [c["text"] for c in rows[0]["choices"]] == ["red", "green", "blue"]


def test_cli_custom_number_task_and_errors(tmp_path, tiny_model_dir, capsys):
    path = write_json(tmp_path / "sums.json", [{"instruction": "What is 2 + 2?", "answer": "4"}] * 3)
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_model_dir), "--task", "sums", "--answer-type", "number", "--data",
                 str(path), "--max-new-tokens", "2", "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert json.loads((out / "results.json").read_text())["tasks"]["sums"]["n"] == 3
    # unknown task without --answer-type: the message says how to score it
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "sums2", "--data", str(path), "--output",
                 str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "unknown task 'sums2'" in err and "--answer-type" in err
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "sums3", "--answer-type", "number",
                 "--output", str(out)]) == 2  # fmt: skip
    assert "--data FILE" in capsys.readouterr().err
