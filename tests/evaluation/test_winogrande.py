"""WinoGrande: options parsed from LLM-Adapters' one-line layout, and lm-eval's partial scoring reproduced.

The fixture file is written in the upstream layout (`dataset/winogrande/test.json` of LLM-Adapters puts the
options and the format line on one line: ``Option1: Sarah Option2: Maria Answer format: option1/option2``).
The cross-check runs lm-evaluation-harness's own WinoGrande preprocessing (its ``preprocess_winogrande``
functions, through a local task YAML) with lm-eval's ``HFLM`` on the same tiny model and questions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modetune.evaluation.pipeline import evaluate_model
from modetune.evaluation.tasks import blank_sentence, load_task_examples, parse_choices, question_stem
from tests.evaluation.conftest import write_json

PREFIX = "Please choose the correct answer to fill in the blank to complete the given sentence: "
DOCS = [
    ("Sarah was a much better surgeon than Maria so _ always got the easier cases.", "Sarah", "Maria", "2"),
    ("The trophy doesn't fit into the brown suitcase because the _ is too large.", "trophy", "suitcase", "1"),
    ("Ian volunteered to eat Dennis's menudo after already having a bowl because _ despised eating intestine.",
     "Ian", "Dennis", "2"),
    ("He never wore the watch, preferring the ring, because the _ was uncomfortable.", "watch", "ring", "1"),
    ("Kevin had to stay home while Brian went out, since _ had the flu.", "Kevin", "Brian", "1"),
    ("The cat of Sarah has some mouth problems, so she takes it to see Maria. _ is a responsible cat owner.",
     "Sarah", "Maria", "1"),
    ("Emily could not lift the box but Jessica could, because _ was weak.", "Emily", "Jessica", "1"),
    ("The bottle fell off the table onto the rug, but the _ did not break because it is soft.", "bottle", "rug", "2"),
]  # fmt: skip


def upstream_record(sentence: str, o1: str, o2: str, answer: str) -> dict:
    """A record exactly as LLM-Adapters writes it (options and format line share one line)."""
    return {
        "instruction": f"{PREFIX}{sentence}\n\nOption1: {o1} Option2: {o2} Answer format: option1/option2",
        "input": "",
        "output": f"the correct answer is option{answer}",
        "answer": f"option{answer}",
    }


@pytest.fixture(scope="module")
def wino_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wino")
    return write_json(root / "winogrande" / "test.json", [upstream_record(*d) for d in DOCS])


def test_one_line_layout_parses_cleanly(wino_file):
    instruction = json.loads(wino_file.read_text())[0]["instruction"]
    assert instruction.endswith("Option1: Sarah Option2: Maria Answer format: option1/option2")
    choices = parse_choices("winogrande", instruction)
    assert [(c.label, c.text) for c in choices] == [("option1", "Sarah"), ("option2", "Maria")]
    assert question_stem("winogrande", instruction) == PREFIX + DOCS[0][0]
    assert blank_sentence("winogrande", instruction) == (
        "Sarah was a much better surgeon than Maria so ",
        " always got the easier cases.",
    )
    # the layout with a line of its own still works
    own_line = instruction.replace(" Answer format:", "\n\nAnswer format:")
    assert [c.text for c in parse_choices("winogrande", own_line)] == ["Sarah", "Maria"]
    examples = load_task_examples("winogrande", wino_file, with_choices=True)
    assert all("Answer" not in c.text for ex in examples for c in ex.choices)


def test_partial_is_the_default_style_and_other_styles_remain(tiny_lm, tiny_tokenizer, wino_file):
    report = evaluate_model(
        tiny_lm, tiny_tokenizer, ["winogrande"], data=wino_file, scoring="loglikelihood", progress=False
    )
    assert report.results["settings"]["loglikelihood"] == {"style": "partial", "norm": "none"}
    row = report.predictions[0]
    assert row["prompt"] == "Sarah was a much better surgeon than Maria so "  # no template, as lm-eval
    for style in ("text", "label"):
        other = evaluate_model(
            tiny_lm, tiny_tokenizer, ["winogrande"], data=wino_file, scoring="loglikelihood", ll_style=style,
            progress=False,
        )  # fmt: skip
        assert other.results["settings"]["loglikelihood"]["style"] == style


def test_partial_style_needs_a_blank(tiny_lm, tiny_tokenizer, user_commonsense_dir):
    from modetune.errors import ConfigError

    with pytest.raises(ConfigError, match="no blank"):
        evaluate_model(
            tiny_lm, tiny_tokenizer, ["siqa"], data=user_commonsense_dir, scoring="loglikelihood", ll_style="partial"
        )


def _lm_eval_task(root: Path) -> None:
    """lm-eval's own WinoGrande task definition, pointed at a local JSONL of the same questions."""
    rows = [{"sentence": s, "option1": o1, "option2": o2, "answer": a} for s, o1, o2, a in DOCS]
    (root / "wino.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "utils.py").write_text(
        "from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text\n"
    )
    (root / "wino.yaml").write_text(
        f"""task: modetune_local_winogrande
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "wino.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
doc_to_choice: !function utils.doc_to_choice
metric_list:
  - metric: acc
"""
    )


def test_matches_lm_evaluation_harness(tiny_lm, tiny_tokenizer, wino_file, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _lm_eval_task(tmp_path)
    lm = HFLM(pretrained=tiny_lm, tokenizer=tiny_tokenizer, backend="causal", batch_size=4)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["modetune_local_winogrande"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    theirs = {s["doc"]["sentence"]: [r[0][0] for r in s["resps"]] for s in out["samples"]["modetune_local_winogrande"]}
    theirs_acc = out["results"]["modetune_local_winogrande"]["acc,none"]

    ours = evaluate_model(tiny_lm, tiny_tokenizer, ["winogrande"], data=wino_file, scoring="loglikelihood",
                          progress=False)  # fmt: skip
    assert len(ours.predictions) == len(DOCS) == len(theirs)
    for row in ours.predictions:
        sentence = row["question"][len(PREFIX) :].split("\n\n")[0]
        assert [c["logprob"] for c in row["choices"]] == pytest.approx(theirs[sentence], abs=2e-4)
    assert ours.accuracy("winogrande") == theirs_acc
    # the two options really are scored differently (not a trivially equal pair)
    assert any(abs(a - b) > 1e-3 for a, b in theirs.values())
