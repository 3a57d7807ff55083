"""Task names, data-file discovery, gold validation, choice parsing, seeded subsets."""

from __future__ import annotations

import json

import pytest

from modetune.errors import DataError, ModetuneError
from modetune.evaluation.tasks import (
    GROUPS,
    TASKS,
    find_task_file,
    get_task,
    load_task_examples,
    parse_choices,
    resolve_task_names,
    select_subset,
)
from tests.evaluation.conftest import write_json


def test_names_and_aliases():
    assert get_task("ARC-Easy").name == "arc_easy"
    assert get_task("arc-c").name == "arc_challenge"
    assert get_task("social_i_qa").name == "siqa"
    assert get_task("GSM8K").name == "gsm8k"
    assert get_task(" OBQA ").name == "openbookqa"
    assert set(GROUPS["arithmetic"]) == {"gsm8k", "svamp", "aqua", "multiarith", "addsub", "singleeq", "mawps"}
    assert len(GROUPS["commonsense"]) == 8
    assert len([t for t in TASKS.values() if t.category != "custom"]) == 16  # + MathQA


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ModetuneError, match=r"unknown task 'gsm9k'.*gsm8k.*boolq"):
        get_task("gsm9k")


PIQA = (
    "Please choose the correct solution to the question: How do I open a jar?\n\n"
    "Solution1: Twist the lid.\n\nSolution2: Hit it with a hammer: hard.\n\nAnswer format: solution1/solution2"
)
ARC5 = (
    "Please choose the correct answer to the question: Which is a gas?\n\n"
    "Answer1: ice Answer2: steam Answer3: rock Answer4: wood Answer5: iron\n\n"
    "Answer format: answer1/answer2/answer3/answer4/answer5"
)


@pytest.mark.parametrize(
    ("task", "instruction", "expected"),
    [
        ("piqa", PIQA, [("solution1", "Twist the lid."), ("solution2", "Hit it with a hammer: hard.")]),
        (
            "arc_easy",
            ARC5,
            [("answer1", "ice"), ("answer2", "steam"), ("answer3", "rock"), ("answer4", "wood"), ("answer5", "iron")],
        ),
        (
            "winogrande",
            "Please choose ... sentence: A _ B\n\nOption1: cat Option2: dog\n\nAnswer format: option1/option2",
            [("option1", "cat"), ("option2", "dog")],
        ),
        (
            "hellaswag",
            "Please choose the correct ending: He\n\nEnding1: a Ending2: b Ending3: c Ending4: d\n\n"
            "Answer format: ending1/ending2/ending3/ending4",
            [("ending1", "a"), ("ending2", "b"), ("ending3", "c"), ("ending4", "d")],
        ),
        (
            "boolq",
            "Please answer ... question: is it?\n\nAnswer format: true/false",
            [("true", "true"), ("false", "false")],
        ),
        (
            "aqua",
            "What is 2+2? Answer Choices: (A) 3 (B) 4 m (C) 5 (D) 6 (E) 22",
            [("A", "3"), ("B", "4 m"), ("C", "5"), ("D", "6"), ("E", "22")],
        ),
        (
            "aqua",
            "What is 2+2? The options: A ) 3 , B ) 4 , C ) 5 , D ) 6 , E ) 7",
            [("A", "3"), ("B", "4"), ("C", "5"), ("D", "6"), ("E", "7")],
        ),
    ],
)
def test_parse_choices(task, instruction, expected):
    assert [(c.label, c.text) for c in parse_choices(task, instruction)] == expected


def test_parse_choices_errors():
    broken = ARC5.replace("Answer3: rock ", "")
    with pytest.raises(DataError, match="cannot find 'Answer3:'"):
        parse_choices("arc_easy", broken)
    with pytest.raises(DataError, match="Answer Choices"):
        parse_choices("aqua", "What is 2+2?")
    with pytest.raises(ModetuneError, match="use --scoring generate"):
        parse_choices("gsm8k", "What is 2+2?")


def test_find_task_file_layouts(tmp_path, monkeypatch):
    ours = write_json(tmp_path / "a" / "arc_easy" / "test.json", [])
    upstream = write_json(tmp_path / "b" / "dataset" / "ARC-Challenge" / "test.json", [])
    flat = write_json(tmp_path / "c" / "siqa.jsonl", [])
    assert find_task_file("arc_easy", tmp_path / "a") == ours
    assert find_task_file("arc_challenge", tmp_path / "b") == upstream
    assert find_task_file("siqa", tmp_path / "c") == flat
    assert find_task_file("siqa", flat) == flat  # a file is used as given
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.chdir(tmp_path)
    assert find_task_file("arc_easy") == ours


def test_missing_data_says_to_pass_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"no test file found for task 'winogrande'.*--data"):
        find_task_file("winogrande")
    with pytest.raises(DataError, match="does not exist"):
        find_task_file("gsm8k", tmp_path / "nope.json")


def test_groups_keep_tasks_with_data(tmp_path):
    write_json(tmp_path / "gsm8k" / "test.json", [])
    write_json(tmp_path / "boolq" / "test.json", [])
    assert [s.name for s in resolve_task_names(["all"], tmp_path)] == ["gsm8k", "boolq"]
    assert [s.name for s in resolve_task_names(["boolq,gsm8k", "boolq"], tmp_path)] == ["boolq", "gsm8k"]
    with pytest.raises(DataError, match="group 'commonsense'"):
        resolve_task_names(["commonsense"], tmp_path / "gsm8k")


@pytest.mark.parametrize(
    ("task", "records", "message"),
    [
        ("gsm8k", [{"instruction": "q", "answer": "about seven"}], "is not a number"),
        ("gsm8k", [{"instruction": "q"}], "missing field 'answer'"),
        ("boolq", [{"instruction": "q", "answer": "yes"}], "not one of true/false"),
        ("aqua", [{"instruction": "q", "answer": "F"}], "not one of A/B/C/D/E"),
        ("piqa", [{"question": 3}], "cannot tell the dataset format"),
        ("piqa", [{"instruction": 5, "answer": "solution1"}], "must be a string"),
        ("piqa", {"instruction": "q"}, "JSON array"),
    ],
)
def test_malformed_records(tmp_path, task, records, message):
    path = write_json(tmp_path / "bad.json", records)
    with pytest.raises(DataError, match=message) as info:
        load_task_examples(task, path)
    assert str(path) in str(info.value)


def test_invalid_json_and_missing_choices(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "q", "answer": "true"')
    with pytest.raises(DataError, match="not valid JSON"):
        load_task_examples("boolq", path)
    mc = write_json(tmp_path / "arc.json", [{"instruction": "Which? Answer1: a", "answer": "answer1"}])
    assert load_task_examples("arc_easy", mc)[0].gold == "answer1"  # fine for generation
    with pytest.raises(DataError, match="record index 0"):
        load_task_examples("arc_easy", mc, with_choices=True)  # log-likelihood needs >= 2 choices


def test_gsm8k_original_format(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "How many?", "answer": "3 + 4 = 7\n#### 1,007"}) + "\n")
    (ex,) = load_task_examples("gsm8k", path)
    assert ex.gold == "1007" and ex.instruction == "How many?"


def test_select_subset_is_seeded_and_ordered(tmp_path):
    path = write_json(tmp_path / "b.json", [{"instruction": f"q{i}", "answer": "true"} for i in range(50)])
    examples = load_task_examples("boolq", path)
    a = select_subset(examples, 10, seed=1)
    assert [e.index for e in a] == sorted(e.index for e in a)
    assert a == select_subset(examples, 10, seed=1)
    assert a != select_subset(examples, 10, seed=2)
    assert len(select_subset(examples, 500)) == 50
    with pytest.raises(ModetuneError):
        select_subset(examples, 0)


@pytest.mark.parametrize("task", ["boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa", "aqua"])
def test_every_real_record_parses(shared_data, task):
    """All shipped multiple-choice files parse into choices that contain the gold label."""
    examples = load_task_examples(task, find_task_file(task, shared_data), with_choices=True)
    assert len(examples) > 200
    counts = {len(e.choices) for e in examples}
    assert min(counts) >= 2 and max(counts) <= 5
    assert all(c.text for e in examples for c in e.choices)


@pytest.mark.parametrize("task", ["gsm8k", "svamp", "multiarith", "addsub", "singleeq", "mawps"])
def test_real_numeric_golds_parse(shared_data, task):
    examples = load_task_examples(task, find_task_file(task, shared_data))
    assert all(float(e.gold) == float(e.gold) for e in examples)


def test_user_supplied_files_we_do_not_ship(user_commonsense_dir):
    for task, n in (("siqa", 3), ("winogrande", 2), ("hellaswag", 4)):
        path = find_task_file(task, user_commonsense_dir)
        examples = load_task_examples(task, path, with_choices=True)
        assert len(examples) == 6 and all(len(e.choices) == n for e in examples)


def test_question_stem_drops_options_and_format_line():
    from modetune.evaluation.tasks import question_stem

    assert question_stem("piqa", PIQA) == "Please choose the correct solution to the question: How do I open a jar?"
    assert question_stem("arc_easy", ARC5) == "Please choose the correct answer to the question: Which is a gas?"
    assert question_stem("aqua", "What is 2+2? Answer Choices: (A) 3 (B) 4") == "What is 2+2?"
    assert question_stem("boolq", "question: is it?\n\nAnswer format: true/false") == "question: is it?"
