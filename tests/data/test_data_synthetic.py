"""The synthetic arithmetic generator: correct answers, determinism, disjoint splits, levels, speed."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from modetune.data import generate_problems, load_dataset_file, write_problems
from modetune.errors import DataError

EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")
NUMBER = re.compile(r"\d+")


def _apply(op: str, xs: list[int]) -> int:
    result = xs[0]
    for x in xs[1:]:
        if op == "+":
            result += x
        elif op == "-":
            result -= x
        elif op == "*":
            result *= x
        else:
            assert result % x == 0, f"inexact division {result} / {x}"
            result //= x
    return result


def _eval_expression(expr: str) -> int:
    """Evaluate 'a op b op c' written with a single operator kind (the generator's convention)."""
    tokens = expr.split()
    ops = set(tokens[1::2])
    assert len(ops) == 1, f"mixed operators in one equation: {expr}"
    return _apply(ops.pop(), [int(t) for t in tokens[0::2]])


@pytest.fixture(scope="module")
def mixed() -> list:
    return generate_problems(3000, seed=11, difficulty="mixed")


def test_answers_recomputed_from_the_trace(mixed: list) -> None:
    for ex in mixed:
        steps = ex.metadata["steps"]
        assert steps, ex
        for op, operands, result in steps:
            assert _apply(op, list(operands)) == result >= 0, ex
        assert ex.answer == str(steps[-1][2])
        assert int(ex.answer) > 0


def test_answers_recomputed_from_the_solution_text(mixed: list) -> None:
    for ex in mixed:
        lines = ex.response.split("\n")
        assert lines[-1] == f"The answer is {ex.answer}."
        equations = [EQUATION.search(line) for line in lines[:-1]]
        assert all(equations), ex.response  # every step line is an equation
        for m in equations:
            assert _eval_expression(m.group(1)) == int(m.group(2)), m.group(0)
        assert equations[-1].group(2) == ex.answer
        assert NUMBER.findall(ex.response)[-1] == ex.answer  # what a last-number extractor reads
        # the solution only uses numbers stated in the question or computed before (and 2 for "half")
        known = set(NUMBER.findall(ex.instruction)) | {"2"}
        for m in equations:
            assert set(NUMBER.findall(m.group(1))) <= known, (ex.instruction, ex.response)
            known.add(m.group(2))


def test_deterministic_per_seed() -> None:
    def key(exs: list) -> list:
        return [(e.instruction, e.response, e.answer, e.metadata["template"]) for e in exs]

    assert key(generate_problems(300, seed=5, difficulty="mixed")) == key(
        generate_problems(300, seed=5, difficulty="mixed")
    )
    assert key(generate_problems(300, seed=5)) != key(generate_problems(300, seed=6))
    first = generate_problems(50, seed=5, difficulty=2)
    assert key(generate_problems(50, seed=5, difficulty="2")) == key(first)  # CLI strings mean the same
    assert key(generate_problems(200, seed=5, difficulty=2))[:50] == key(first)  # a longer run extends a shorter one


@pytest.mark.parametrize("difficulty", [1, 2, 3, "mixed"])
def test_train_and_test_splits_are_disjoint(difficulty: int | str) -> None:
    train = generate_problems(4000, seed=0, difficulty=difficulty, split="train")
    test = generate_problems(1000, seed=0, difficulty=difficulty, split="test")
    other_test = generate_problems(1000, seed=123, difficulty=difficulty, split="test")
    train_questions = {e.instruction for e in train}
    assert len(train_questions) == len(train)  # unique within a split
    assert len({e.instruction for e in test}) == len(test)
    assert not train_questions & {e.instruction for e in test}
    assert not train_questions & {e.instruction for e in other_test}  # whatever the seeds
    # stronger: no test problem reuses the template + numbers of a train problem
    skeleton = lambda e: (e.metadata["template"], tuple(s for s in e.metadata["steps"]))  # noqa: E731
    assert not {skeleton(e) for e in train} & {skeleton(e) for e in test}
    assert {e.source for e in train} == {"synthetic/train"} and {e.source for e in test} == {"synthetic/test"}
    assert [e.index for e in test] == list(range(len(test)))


def test_difficulty_levels_differ() -> None:
    levels = {d: generate_problems(1000, seed=3, difficulty=d) for d in (1, 2, 3)}
    for ex in levels[1]:
        ops = [s[0] for s in ex.metadata["steps"]]
        assert len(ops) == 1 and ops[0] in "+-"
        assert all(x <= 25 for x in ex.metadata["steps"][0][1])
    for ex in levels[2]:
        ops = [s[0] for s in ex.metadata["steps"]]
        assert len(ops) == 2 and "*" in ops and "/" not in ops
    for ex in levels[3]:
        ops = [s[0] for s in ex.metadata["steps"]]
        assert len(ops) >= 3 and "/" in ops
    mean_words = {d: sum(len(e.instruction.split()) for e in exs) / len(exs) for d, exs in levels.items()}
    assert mean_words[1] < mean_words[2] < mean_words[3]
    assert {e.metadata["difficulty"] for e in levels[2]} == {2}
    mixed_levels = Counter(e.metadata["difficulty"] for e in generate_problems(900, seed=3, difficulty="mixed"))
    assert set(mixed_levels) == {1, 2, 3} and min(mixed_levels.values()) > 200


def test_variety_forces_reading_the_text() -> None:
    exs = generate_problems(2000, seed=1, difficulty=1)
    templates = Counter(e.metadata["template"] for e in exs)
    assert len(templates) >= 8
    assert {t.split("_")[1] for t in templates} == {"add", "sub"}
    assert len({e.instruction.split()[0] for e in exs}) >= 15  # many names / sentence openings
    objects = Counter(w for e in exs for w in ("apples", "marbles", "stickers", "coins") if w in e.instruction)
    assert len(objects) == 4
    for d in (2, 3):
        assert len({e.metadata["template"] for e in generate_problems(1000, seed=1, difficulty=d)}) >= 5


def test_level_one_is_short() -> None:
    # SmolLM2's tokenizer gives about 1.3-1.5 tokens per word here: < 30 question tokens keeps the whole
    # Alpaca prompt (about 29 tokens of frame) under 60 tokens, and solutions well under 40 tokens.
    for ex in generate_problems(3000, seed=2, difficulty=1):
        assert len(ex.instruction.split()) <= 22, ex.instruction
        assert len(ex.response.split()) <= 17, ex.response
        assert ex.response.count("\n") == 1
        assert int(ex.answer) <= 40


def test_fast() -> None:
    start = time.process_time()
    exs = generate_problems(10_000, seed=0, difficulty="mixed")
    elapsed = time.process_time() - start
    assert len(exs) == 10_000
    # target < 1 s (about 0.3-0.6 s CPU here); the margin keeps a loaded CI machine from flaking
    assert elapsed < 1.5, f"10k problems took {elapsed:.2f} s CPU"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n": 0}, "positive integer"),
        ({"n": 10, "difficulty": 4}, "difficulty must be 1, 2, 3 or 'mixed'"),
        ({"n": 10, "difficulty": "hard"}, "difficulty must be"),
        ({"n": 10, "difficulty": 2.5}, "difficulty must be"),
        ({"n": 10, "difficulty": True}, "difficulty must be"),
        ({"n": 10, "split": "validation"}, "split must be 'train' or 'test'"),
    ],
)
def test_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        generate_problems(**kwargs)


def test_too_many_for_the_problem_space(monkeypatch: pytest.MonkeyPatch) -> None:
    from modetune.data import synthetic

    def tiny(d):  # a template with only two possible problems
        x = d.n(1, 2)
        d.keep("tiny", x)
        t = synthetic._Trace()
        eq, _ = t("+", x, 1)
        return synthetic._done(d, f"What is {x} + 1?", [eq], t)

    monkeypatch.setitem(synthetic._LEVELS, 1, (tiny,))
    with pytest.raises(DataError, match=r"could only generate [0-2] distinct problems"):
        generate_problems(5, difficulty=1)


@pytest.mark.parametrize("name", ["problems.jsonl", "problems.json"])
def test_write_and_reload(tmp_path: Path, name: str) -> None:
    path = write_problems(tmp_path / name, 50, seed=4, difficulty="mixed", split="test")
    original = generate_problems(50, seed=4, difficulty="mixed", split="test")
    back = load_dataset_file(path, require_response=True)
    assert [(e.instruction, e.response, e.answer) for e in back] == [
        (e.instruction, e.response, e.answer) for e in original
    ]
    assert '"meta"' in path.read_text()
