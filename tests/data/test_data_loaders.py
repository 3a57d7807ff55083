"""Loaders: real shared files, every malformed-file case, format detection, mixing, writing."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from modetune.data import Example, load_dataset_file, load_datasets, write_examples
from modetune.errors import DataError, ModetuneError

# record counts from ../shared/data/README.md
REAL_FILES = {
    "gsm8k/test.json": 1319,
    "svamp/test.json": 1000,
    "aqua/test.json": 254,
    "multiarith/test.json": 600,
    "addsub/test.json": 395,
    "singleeq/test.json": 508,
    "mawps/test.json": 238,
    "boolq/test.json": 3270,
    "boolq/train.json": 9427,
    "piqa/test.json": 1838,
    "arc_easy/test.json": 2376,
    "arc_easy/train.json": 2251,
    "arc_challenge/test.json": 1172,
    "arc_challenge/train.json": 1119,
    "openbookqa/test.json": 500,
    "openbookqa/train.json": 4957,
    "gsm8k_openai/train.jsonl": 7473,
    "gsm8k_openai/test.jsonl": 1319,
}


# --------------------------------------------------------------------------------------------------
# real files


@pytest.mark.parametrize(("name", "count"), sorted(REAL_FILES.items()))
def test_real_file_counts(shared_data_dir: Path, name: str, count: int) -> None:
    examples = load_dataset_file(shared_data_dir / name)
    assert len(examples) == count
    assert [e.index for e in examples] == list(range(count))
    assert all(e.instruction.strip() for e in examples)
    assert all(e.answer for e in examples)
    assert examples[0].source == str(shared_data_dir / name)


def test_llm_adapters_commonsense_fields(shared_data_dir: Path) -> None:
    examples = load_dataset_file(shared_data_dir / "boolq/train.json", require_response=True)
    assert {e.answer for e in examples} == {"true", "false"}
    assert all(e.response == f"the correct answer is {e.answer}" for e in examples)
    assert examples[0].instruction.startswith("Please answer the following question with true or false")
    assert examples[0].input == ""


def test_llm_adapters_empty_output_loads_for_eval_but_not_training(shared_data_dir: Path) -> None:
    path = shared_data_dir / "mawps/test.json"
    examples = load_dataset_file(path)
    assert all(e.response == "" for e in examples)
    with pytest.raises(DataError, match=r"mawps/test\.json, record index 0: field 'output' is empty"):
        load_dataset_file(path, require_response=True)


def test_gsm8k_original(shared_data_dir: Path) -> None:
    examples = load_dataset_file(shared_data_dir / "gsm8k_openai/train.jsonl")
    first = examples[0]
    assert first.instruction.startswith("Natalia sold clips to 48 of her friends")
    assert first.answer == "72"
    assert first.response == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72."
    )
    assert not any("<<" in e.response or "####" in e.response for e in examples)
    assert all(e.response.endswith(f"The answer is {e.answer}.") for e in examples)
    assert all(re.fullmatch(r"-?\d+", e.answer) for e in examples)  # no thousands separators left
    raw = [json.loads(line) for line in (shared_data_dir / "gsm8k_openai/train.jsonl").open()]
    with_commas = [i for i, r in enumerate(raw) if "," in r["answer"].rpartition("####")[2]]
    assert with_commas, "the README promises answers with thousands separators"
    for i in with_commas:
        assert examples[i].answer == raw[i]["answer"].rpartition("####")[2].strip().replace(",", "")


def test_gsm8k_options(shared_data_dir: Path) -> None:
    path = shared_data_dir / "gsm8k_openai/test.jsonl"
    kept = load_dataset_file(path, keep_calculator_annotations=True, gsm8k_answer_line=None)
    raw = [json.loads(line) for line in path.open()]
    assert [e.response for e in kept[:50]] == [r["answer"] for r in raw[:50]]
    hashes = load_dataset_file(path, gsm8k_answer_line=None)
    assert hashes[0].response.endswith(f"#### {raw[0]['answer'].rpartition('####')[2].strip()}")
    assert "<<" not in hashes[0].response


def test_gsm8k_two_renderings_agree(shared_data_dir: Path) -> None:
    adapters = load_dataset_file(shared_data_dir / "gsm8k/test.json")
    original = load_dataset_file(shared_data_dir / "gsm8k_openai/test.jsonl")
    assert Counter(float(e.answer) for e in adapters) == Counter(float(e.answer) for e in original)


# --------------------------------------------------------------------------------------------------
# malformed files: each must name the file and the line / record index


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _array(*records: object) -> str:
    return json.dumps(list(records), indent=2)


def _lines(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5.", "answer": "5"}
GOOD_GSM = {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}
GOOD_PC = {"prompt": "2 + 3 =", "completion": " 5"}
GOOD_CHAT = {"messages": [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}]}

BAD_CASES = [
    # (id, file name, content, load kwargs, expected location, expected problem fragment)
    (
        "alpaca-missing-instruction",
        "d.json",
        _array(GOOD, GOOD, {"input": "", "output": "x"}),
        {},
        "record index 2",
        "missing field 'instruction'",
    ),
    ("alpaca-empty-instruction", "d.json", _array(GOOD, {**GOOD, "instruction": "  "}), {}, "record index 1", "empty"),
    ("alpaca-wrong-type", "d.json", _array({**GOOD, "instruction": 7}), {}, "record index 0", "must be a string"),
    ("alpaca-input-wrong-type", "d.json", _array(GOOD, {**GOOD, "input": None}), {}, "record index 1", "'input'"),
    ("alpaca-answer-wrong-type", "d.json", _array(GOOD, {**GOOD, "answer": [5]}), {}, "record index 1", "'answer'"),
    ("record-not-object", "d.json", _array(GOOD, "just a string"), {}, "record index 1", "expected an object"),
    (
        "alpaca-empty-output-training",
        "d.json",
        _array(GOOD, GOOD, GOOD, {**GOOD, "output": ""}),
        {"require_response": True},
        "record index 3",
        "'output' is empty",
    ),
    (
        "alpaca-missing-output-training",
        "d.json",
        _array({"instruction": "x"}),
        {"require_response": True},
        "record index 0",
        "missing field 'output'",
    ),
    ("json-syntax", "d.json", '[\n  {"instruction": "a"},\n  {"instruction": }\n]', {}, "line 3", "not valid JSON"),
    ("top-level-object", "d.json", json.dumps(GOOD, indent=2), {}, "d.json", "top level is a JSON object"),
    ("top-level-number", "d.json", "42", {}, "d.json", "top level is a JSON number"),
    ("empty-file", "d.json", "", {}, "d.json", "file is empty"),
    ("whitespace-file", "d.jsonl", "\n  \n", {}, "d.jsonl", "file is empty"),
    ("empty-list", "d.json", "[]", {}, "d.json", "contains no records"),
    ("jsonl-bad-line", "d.jsonl", _lines(GOOD_GSM, GOOD_GSM, "{not json"), {}, "line 3", "not valid JSON"),
    ("jsonl-array-line", "d.jsonl", _lines(GOOD_GSM, [1, 2]), {}, "line 2", "record is a JSON array"),
    (
        "jsonl-blank-lines-count",
        "d.jsonl",
        _lines(GOOD_GSM) + "\n\n" + _lines({"question": "q"}),
        {},
        "line 4",
        "missing field 'answer'",
    ),
    ("gsm8k-no-final", "d.jsonl", _lines(GOOD_GSM, {"question": "q", "answer": "5"}), {}, "line 2", "####"),
    (
        "gsm8k-final-not-number",
        "d.jsonl",
        _lines({"question": "q", "answer": "x\n#### five"}),
        {},
        "line 1",
        "not a number",
    ),
    ("gsm8k-empty-question", "d.jsonl", _lines(GOOD_GSM, {**GOOD_GSM, "question": ""}), {}, "line 2", "empty"),
    (
        "pc-missing-completion",
        "d.jsonl",
        _lines(GOOD_PC, {"prompt": "x"}),
        {"format": "prompt_completion"},
        "line 2",
        "missing field 'completion'",
    ),
    ("pc-empty-prompt", "d.jsonl", _lines({**GOOD_PC, "prompt": ""}), {}, "line 1", "'prompt' is empty"),
    ("pc-wrong-type", "d.jsonl", _lines(GOOD_PC, {**GOOD_PC, "completion": 5}), {}, "line 2", "must be a string"),
    (
        "pc-empty-completion-training",
        "d.jsonl",
        _lines({**GOOD_PC, "completion": ""}),
        {"require_response": True},
        "line 1",
        "'completion' is empty",
    ),
    ("chat-not-list", "d.jsonl", _lines(GOOD_CHAT, {"messages": "hi"}), {}, "line 2", "must be a list"),
    ("chat-empty-list", "d.jsonl", _lines({"messages": []}), {}, "line 1", "empty list"),
    (
        "chat-bad-role",
        "d.jsonl",
        _lines({"messages": [{"role": "bot", "content": "x"}]}),
        {},
        "line 1",
        "role is 'bot'",
    ),
    (
        "chat-empty-content",
        "d.jsonl",
        _lines(GOOD_CHAT, {"messages": [{"role": "user", "content": ""}]}),
        {},
        "line 2",
        "content is empty",
    ),
    (
        "chat-missing-content",
        "d.jsonl",
        _lines({"messages": [{"role": "user"}]}),
        {},
        "line 1",
        "missing 'content'",
    ),
    (
        "chat-content-wrong-type",
        "d.jsonl",
        _lines({"messages": [{"role": "user", "content": ["a"]}]}),
        {},
        "line 1",
        "must be a string",
    ),
    (
        "chat-last-not-assistant-training",
        "d.jsonl",
        _lines(GOOD_CHAT, {"messages": [{"role": "user", "content": "x"}]}),
        {"require_response": True},
        "line 2",
        "last message",
    ),
    (
        "chat-no-user",
        "d.jsonl",
        _lines({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}),
        {},
        "line 1",
        "no user message",
    ),
    ("unknown-keys", "d.jsonl", _lines({"body": "hello"}), {}, "line 1", "cannot tell the dataset format"),
    ("text-empty", "d.jsonl", _lines({"text": "a document"}, {"text": "  "}), {}, "line 2", "field 'text' is empty"),
    ("text-not-string", "d.jsonl", _lines({"text": ["a"]}), {}, "line 1", "field 'text' must be a string"),
    (
        "explicit-format-mismatch",
        "d.json",
        _array(GOOD),
        {"format": "gsm8k"},
        "record index 0",
        "missing field 'question'",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "where", "problem"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_files_raise_data_error(
    tmp_path: Path, name: str, content: str, kwargs: dict, where: str, problem: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        load_dataset_file(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert where in message
    assert problem in message
    assert isinstance(info.value, ModetuneError) and isinstance(info.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "train.json"
    with pytest.raises(DataError, match=r"nope/train\.json: dataset file not found"):
        load_dataset_file(path)


def test_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_dataset_file(tmp_path)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: is not UTF-8"):
        load_dataset_file(path)


def test_unknown_format_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.json", _array(GOOD))
    with pytest.raises(DataError, match="unknown dataset format 'csv'"):
        load_dataset_file(path, format="csv")


# --------------------------------------------------------------------------------------------------
# good files in every format


def test_alpaca_json_and_jsonl_agree(tmp_path: Path) -> None:
    records = [GOOD, {"instruction": "Name it.", "input": "a red fruit", "output": "apple"}, {"instruction": "q"}]
    a = load_dataset_file(_write(tmp_path, "a.json", _array(*records)))
    b = load_dataset_file(_write(tmp_path, "b.jsonl", _lines(*records)))
    assert [(e.instruction, e.input, e.response, e.answer) for e in a] == [
        (e.instruction, e.input, e.response, e.answer) for e in b
    ]
    assert a[0] == Example("Add 2 and 3.", "", "2 + 3 = 5. The answer is 5.", "5", str(tmp_path / "a.json"), 0)
    assert a[1].input == "a red fruit" and a[1].answer is None
    assert a[2].response == ""  # evaluation-only record without output
    assert a[1].user_message == "Name it.\n\na red fruit"
    assert a[1].prompt_messages() == [{"role": "user", "content": "Name it.\n\na red fruit"}]


def test_numeric_answer_is_converted(tmp_path: Path) -> None:
    exs = load_dataset_file(_write(tmp_path, "d.json", _array({**GOOD, "answer": 5.0}, {**GOOD, "answer": 2.5})))
    assert [e.answer for e in exs] == ["5", "2.5"]


def test_jsonl_content_in_json_file_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    path.write_text("\ufeff" + _lines(GOOD_PC, GOOD_PC), encoding="utf-8")
    exs = load_dataset_file(path)
    assert len(exs) == 2 and exs[1].instruction == "2 + 3 =" and exs[1].response == " 5"


def test_jsonl_unicode_line_separator_inside_strings(tmp_path: Path) -> None:
    record = {"prompt": "a\u2028b\x85c", "completion": "d\u2029e"}
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\r\n" + json.dumps(GOOD_PC) + "\r\n", encoding="utf-8")
    exs = load_dataset_file(path)
    assert len(exs) == 2 and exs[0].instruction == record["prompt"] and exs[0].response == record["completion"]


def test_prompt_completion(tmp_path: Path) -> None:
    exs = load_dataset_file(_write(tmp_path, "pc.jsonl", _lines(GOOD_PC, {**GOOD_PC, "answer": "5"})))
    assert exs[0].instruction == "2 + 3 =" and exs[0].response == " 5" and exs[0].answer is None
    assert exs[1].answer == "5" and exs[1].index == 1


def test_chat_records(tmp_path: Path) -> None:
    conversation = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2 + 3?"},
            {"role": "assistant", "content": "5"},
        ],
        "answer": "5",
    }
    eval_only = {"messages": [{"role": "user", "content": "1 + 1?"}]}
    exs = load_dataset_file(_write(tmp_path, "chat.jsonl", _lines(conversation, eval_only)))
    ex = exs[0]
    assert ex.instruction == "2 + 3?" and ex.response == "5" and ex.answer == "5"
    assert ex.input == "System: Be brief.\nUser: Hi\nAssistant: Hello!"
    assert ex.prompt_messages() == conversation["messages"][:-1]
    assert exs[1].response == "" and exs[1].prompt_messages() == eval_only["messages"]
    hash(ex)  # frozen records stay hashable despite the message list


def test_plain_text_records(tmp_path: Path) -> None:
    """TRL's language-modeling records: a document per record, detected from the `text` key, other keys ignored."""
    docs = [
        {"source": "austen", "title": "Chapter 1", "text": "It is a truth universally acknowledged."},
        {"text": "B"},
    ]
    for name in ("t.jsonl", "t.json"):
        exs = load_dataset_file(_write(tmp_path, name, (_lines if name.endswith("l") else _array)(*docs)))
        assert [(e.plain_text, e.instruction, e.response, e.answer) for e in exs] == [
            (True, "", docs[0]["text"], None), (True, "", "B", None)
        ]  # fmt: skip
    texts = [(e.plain_text, e.response) for e in exs]
    assert [(e.plain_text, e.response) for e in load_dataset_file(tmp_path / "t.jsonl", format="plain-text")] == texts
    back = load_dataset_file(write_examples(exs, tmp_path / "back.jsonl"))
    assert [(e.plain_text, e.response) for e in back] == texts and json.loads(
        (tmp_path / "back.jsonl").read_text().splitlines()[1]
    ) == {"text": "B"}


def test_write_examples_roundtrip(tmp_path: Path) -> None:
    exs = load_dataset_file(_write(tmp_path, "src.json", _array(GOOD, {**GOOD, "input": "ctx"})))
    for name in ("out.json", "sub/out.jsonl"):
        path = write_examples(exs, tmp_path / name)
        back = load_dataset_file(path)
        assert [(e.instruction, e.input, e.response, e.answer) for e in back] == [
            (e.instruction, e.input, e.response, e.answer) for e in exs
        ]
    assert json.loads((tmp_path / "out.json").read_text())[0] == GOOD
    with pytest.raises(DataError, match="nothing to write"):
        write_examples([], tmp_path / "empty.json")


# --------------------------------------------------------------------------------------------------
# mixing


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    a = _write(tmp_path, "a.json", _array(*({**GOOD, "instruction": f"a{i}"} for i in range(10))))
    b = _write(tmp_path, "b.jsonl", _lines(*({"prompt": f"b{i}", "completion": "x"} for i in range(4))))
    return a, b


def _names(exs: list[Example]) -> list[str]:
    return [e.instruction for e in exs]


def test_concatenate_and_shuffle(two_files: tuple[Path, Path]) -> None:
    a, b = two_files
    ordered = load_datasets([a, b], shuffle=False)
    assert _names(ordered) == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(4)]
    mixed = load_datasets([a, b], seed=1)
    assert sorted(_names(mixed)) == sorted(_names(ordered))
    assert _names(mixed) != _names(ordered)
    assert _names(load_datasets([a, b], seed=1)) == _names(mixed)
    assert _names(load_datasets([a, b], seed=2)) != _names(mixed)
    assert len(load_datasets([a, b], num_examples=5)) == 5
    assert _names(load_datasets(a, shuffle=False)) == [f"a{i}" for i in range(10)]


def test_weighted_mix(two_files: tuple[Path, Path]) -> None:
    a, b = two_files
    mixed = load_datasets([a, b], mix=[1, 1], seed=0, num_examples=20)
    counts = Counter(name[0] for name in _names(mixed))
    assert counts == {"a": 10, "b": 10}
    # b has 4 records: repeated twice in full plus 2 sampled -> each record at least twice
    assert min(Counter(n for n in _names(mixed) if n.startswith("b")).values()) >= 2
    assert _names(load_datasets([a, b], mix=[1, 1], seed=0, num_examples=20)) == _names(mixed)
    # default size = total records; 3:1 weights over 14 -> 10.5 / 3.5, largest remainder gives 11 / 3
    default = load_datasets([a, b], mix=[3, 1], seed=0)
    assert Counter(n[0] for n in _names(default)) == {"a": 11, "b": 3}
    assert len({n for n in _names(default) if n.startswith("b")}) == 3  # subsampled without replacement
    assert {n for n in _names(default) if n.startswith("a")} == {f"a{i}" for i in range(10)}  # 10 + 1 extra
    by_name = load_datasets([a, b], mix={str(a): 0, str(b): 1}, seed=0, num_examples=3)
    assert all(n.startswith("b") for n in _names(by_name))


@pytest.mark.parametrize(
    ("mix", "fragment"),
    [
        ([1], "2 files"),
        ([1, -1], "weights must be finite"),
        ([0, 0], "all mix weights are 0"),
        ({"x.json": 1}, "not in paths"),
    ],
)
def test_bad_mix(two_files: tuple[Path, Path], mix: object, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_datasets(list(two_files), mix=mix)


def test_load_datasets_errors(two_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset files"):
        load_datasets([])
    with pytest.raises(DataError, match="num_examples"):
        load_datasets(list(two_files), num_examples=0)
    with pytest.raises(DataError, match=r"missing\.json: dataset file not found"):
        load_datasets([two_files[0], tmp_path / "missing.json"])
