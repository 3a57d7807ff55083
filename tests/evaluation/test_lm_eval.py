"""lm-evaluation-harness path end to end: a MoDE model scored through lm-eval's Python API.

Local YAML tasks over local JSONL files (no hub access). Checks that lm-eval's log-likelihoods and
generations come from the MoDE ensemble (its forward/generate are called, and the numbers equal
modetune's own scorer on the ensemble, not the base model's).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra (pip install 'modetune[eval]')")

from modetune.evaluation.lm_eval_model import ModetuneLM  # noqa: E402
from modetune.evaluation.runner import GenerationSettings, generate_texts, loglikelihoods  # noqa: E402

MC_DOCS = [
    {"question": "Mia has 5 apples. She buys 3 more. How many apples?", "choices": ["8", "2", "15"], "gold": 0},
    {"question": "There are 12 marbles. Leo takes 4. How many are left?", "choices": ["16", "8"], "gold": 1},
    {"question": "Is the sky blue?", "choices": ["true", "false"], "gold": 0},
]
GEN_DOCS = [{"question": "Mia has 5 apples.", "answer": "8"}, {"question": "The answer is", "answer": "8"}]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (root / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in GEN_DOCS))
    (root / "mc.yaml").write_text(
        f"""task: modetune_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
"""
    )
    (root / "gen.yaml").write_text(
        f"""task: modetune_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "gen.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n\\n\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
"""
    )
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def mode_model(tiny_tokenizer):
    from modetune.mode import get_mode_model
    from tests.conftest import build_tiny_model

    base = build_tiny_model(
        "llama",
        vocab_size=len(tiny_tokenizer),
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.eos_token_id,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    mode = get_mode_model(base, num_layers=3).eval()
    with torch.no_grad():
        for p in mode.router.parameters():
            p.add_(torch.randn_like(p))
    return mode


def _evaluate(lm, task_dir, tasks):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )


def test_lm_eval_scores_through_the_ensemble(mode_model, tiny_tokenizer, task_dir):
    calls = {"forward": 0, "generate": 0}
    forward, generate = mode_model.forward, mode_model.generate

    def counting_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counting_generate(*args, **kwargs):
        calls["generate"] += 1
        return generate(*args, **kwargs)

    mode_model.forward, mode_model.generate = counting_forward, counting_generate
    lm = ModetuneLM(model=mode_model, tokenizer=tiny_tokenizer, batch_size=2)
    out = _evaluate(lm, task_dir, ["modetune_tiny_mc", "modetune_tiny_gen"])
    assert calls["forward"] > 0 and calls["generate"] > 0
    assert 0 <= out["results"]["modetune_tiny_mc"]["acc,none"] <= 1
    assert "exact_match,none" in out["results"]["modetune_tiny_gen"]

    # lm-eval's log-likelihoods are the ensemble's, computed by modetune's own scorer
    samples = out["samples"]["modetune_tiny_mc"]
    for sample in samples:
        doc = sample["doc"]
        context = f"Question: {doc['question']}\nAnswer:"
        ours = loglikelihoods(mode_model, tiny_tokenizer, [(context, " " + c) for c in doc["choices"]])
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx([lp for lp, _, _ in ours], abs=1e-3)
    base_lp = loglikelihoods(
        mode_model.causal_lm, tiny_tokenizer, [(f"Question: {MC_DOCS[0]['question']}\nAnswer:", " 8")]
    )
    mode_lp = next(s for s in samples if s["doc"] == MC_DOCS[0])["resps"][0][0][0]
    assert not math.isclose(base_lp[0][0], mode_lp, abs_tol=1e-3)  # not the base model's numbers

    # and its generations are the ensemble's greedy decodes
    gen = out["samples"]["modetune_tiny_gen"]
    settings = GenerationSettings(stop_strings=())
    for sample in gen:
        ours = generate_texts(
            mode_model, tiny_tokenizer, [sample["doc"]["question"]], max_new_tokens=4, settings=settings
        )
        assert sample["resps"][0][0].strip() == ours[0]


def test_registered_model_loads_a_run(mode_run_dir, task_dir):
    out = lm_eval.simple_evaluate(
        model="modetune",
        model_args={"run": str(mode_run_dir)},
        tasks=["modetune_tiny_mc"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0,
        device="cpu",
    )
    assert 0 <= out["results"]["modetune_tiny_mc"]["acc,none"] <= 1
    assert out["config"]["model"] == "modetune"


def test_bad_model_args(tiny_tokenizer):
    from modetune.errors import ModetuneError

    with pytest.raises(ModetuneError, match="run=RUN_DIR"):
        ModetuneLM()
    with pytest.raises(ModetuneError, match="tokenizer"):
        ModetuneLM(model=torch.nn.Linear(2, 2))
    with pytest.raises(ModetuneError, match="dora_cache=True or dora_cache=False"):
        ModetuneLM(model=torch.nn.Linear(2, 2), dora_cache="maybe")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_run_on_an_explicit_base(mode_run_dir):
    from modetune.mode import MoDEModel

    lm = ModetuneLM(run=str(mode_run_dir), base=str(mode_run_dir.parent / "base"), device="cpu")
    assert isinstance(lm.model, MoDEModel)
    assert lm.modetune_info["base_override"].endswith("base")
    with pytest.raises(Exception, match="either run=RUN_DIR or model=SPEC"):
        ModetuneLM(run=str(mode_run_dir), model="smollm2-135m")


def test_every_request_type_runs_with_the_dora_cache(mode_model, tiny_tokenizer, task_dir, monkeypatch):
    import contextlib

    import modetune.evaluation.lm_eval_model as lm_eval_model

    seen = []

    @contextlib.contextmanager
    def recording(model, enabled=True):
        seen.append((model is mode_model, enabled))
        yield

    monkeypatch.setattr(lm_eval_model, "dora_caching", recording)
    _evaluate(
        ModetuneLM(model=mode_model, tokenizer=tiny_tokenizer), task_dir, ["modetune_tiny_mc", "modetune_tiny_gen"]
    )
    assert seen == [(True, True), (True, True)]  # loglikelihood, then generate_until
    seen.clear()
    lm = ModetuneLM(model=mode_model, tokenizer=tiny_tokenizer, dora_cache="False")  # as --model_args passes it
    lm.loglikelihood_rolling([])  # the third request type, with no requests
    assert seen == [(True, False)]


def test_dora_cache_gives_lm_eval_the_same_scores(mode_model, tiny_tokenizer, task_dir):
    """The real cache, through lm-eval and a MoDE ensemble over DoRA: the same log-likelihoods and generations."""
    from peft import LoraConfig, get_peft_model

    from modetune.mode import get_mode_model

    try:
        from peft.helpers import DoraCaching  # noqa: F401
    except ImportError:
        pytest.skip("PEFT < 0.19 has no DoRA cache")
    base = get_peft_model(
        mode_model.causal_lm, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(0)
    for name, p in base.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    model = get_mode_model(base, num_layers=3).eval()
    tasks = ["modetune_tiny_mc", "modetune_tiny_gen"]
    cached = _evaluate(ModetuneLM(model=model, tokenizer=tiny_tokenizer), task_dir, tasks)["samples"]
    assert not any(m._dora_cache for m in model.modules() if hasattr(m, "_dora_cache"))  # freed
    plain = _evaluate(ModetuneLM(model=model, tokenizer=tiny_tokenizer, dora_cache=False), task_dir, tasks)["samples"]
    for task in tasks:
        assert [s["resps"] for s in cached[task]] == [s["resps"] for s in plain[task]]


def test_stock_hf_model_scores_an_export_as_modetune_does(mode_run_dir, task_dir, tmp_path):
    """lm-eval's own `hf` model on `modetune export`'s output: the per-choice log-likelihoods of
    `modetune eval --scoring loglikelihood` (modetune's scorer on the loaded run)."""
    from modetune.export import export_run
    from modetune.runs import load_run

    export_run(mode_run_dir, tmp_path / "export")
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tmp_path / "export"), "trust_remote_code": True, "dtype": "float32"},
        tasks=["modetune_tiny_mc"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        device="cpu",
    )
    model, tokenizer, _ = load_run(mode_run_dir, dtype="float32", device="cpu")
    for sample in out["samples"]["modetune_tiny_mc"]:
        doc = sample["doc"]
        ours = loglikelihoods(
            model, tokenizer, [(f"Question: {doc['question']}\nAnswer:", " " + c) for c in doc["choices"]]
        )
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx([lp for lp, _, _ in ours], abs=1e-4)
