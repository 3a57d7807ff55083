"""Bad input, one row each: the exact message, exit status 2 (CLI), no traceback, nothing written or corrupted.

The rows below are also the table in docs/bad-inputs.md: `python tests/test_bad_inputs.py` rewrites it,
and `test_doc_table_matches_the_cases` fails when the two drift apart.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Case:
    area: str  # where the input goes in: a CLI command (and method), MoDEConfig, the Python API
    what: str  # the bad input, in words
    run: Callable[[Path, dict[str, Path]], Any]  # CLI: returns argv; API: raises
    message: str  # exact text of the message ({tmp}: the test's directory, {model}: the tiny base model)

    @property
    def is_cli(self) -> bool:
        return self.area.startswith("modetune ")


# -- inputs ------------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _train(t: Path, c: dict[str, Path], *extra: str) -> list[str]:
    return ["train", "--model", str(c["model"]), "--output", str(t / "out"), "--data", "synthetic:8:1", *extra]


def _pretrain(t: Path, c: dict[str, Path], *extra: str) -> list[str]:
    corpus = t / "corpus.txt"
    if not corpus.exists():
        _write(corpus, "\n\n".join(f"story {i}: a cat sat on a mat and slept." for i in range(400)))
    return ["pretrain", "--tokenizer", str(c["model"]), "--corpus", str(corpus), "--output", str(t / "out"),
            "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--block-size", "16", "--max-steps", "1",
            *extra]  # fmt: skip


def _bigger_tokenizer(t: Path, c: dict[str, Path]) -> str:
    """The tiny model's tokenizer with 10 more tokens: more than the model has embedding rows for."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(c["model"]))
    tokenizer.add_tokens([f"<extra{i}>" for i in range(10)])
    tokenizer.save_pretrained(str(t / "bigger-tokenizer"))
    return str(t / "bigger-tokenizer")


def _eval(t: Path, c: dict[str, Path], *extra: str, task: str = "gsm8k") -> list[str]:
    return ["eval", "--task", task, "--output", str(t / "eval"), "--no-progress", *extra]


def _gsm(t: Path) -> str:
    return str(_write(t / "gsm.json", '[{"instruction": "1+1?", "answer": "2"}]'))


def _api_mode(**kwargs: Any) -> Any:
    from modetune import MoDEConfig

    return MoDEConfig(**kwargs)


def _from_pretrained(base_dir: Path, run: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from modetune import MoDEModel

    return MoDEModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), run)


def _general_text(which: str = "all", root: Path | None = None, altered: str = "") -> Any:
    """`general_text_documents` on ``root`` (an altered copy of ``altered``'s .jsonl in it, if given)."""
    from modetune.data.general_text import general_text_documents

    if altered and root is not None:
        _write(root / "general_text" / f"{altered}.jsonl", '{"source": "x", "title": "x", "text": "x"}\n')
    return general_text_documents(which, root=root)


def _load_run(path: Path) -> Any:
    from modetune.runs import load_run

    return load_run(path)


def _newer_config(t: Path, c: dict[str, Path]) -> Path:
    import json

    run = t / "run"
    shutil.copytree(c["run"], run)
    data = json.loads((run / "mode_config.json").read_text())
    data["router_temperature"] = 0.5
    data["_extra"]["modetune_version"] = "9.0.0"
    (run / "mode_config.json").write_text(json.dumps(data))
    return run


def _truncated_weights(t: Path, c: dict[str, Path]) -> Path:
    run = t / "run"
    shutil.copytree(c["run"], run)
    weights = run / "mode_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return run


def _tokenizer_without_pad_or_eos(t: Path, c: dict[str, Path]) -> list[str]:
    import json

    model = t / "model"
    shutil.copytree(c["model"], model)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model / name
        if path.exists():
            data = json.loads(path.read_text())
            for key in ("pad_token", "eos_token"):
                data.pop(key, None)
            path.write_text(json.dumps(data))
    return ["train", "--model", str(model), "--output", str(t / "out"), "--data", "synthetic:8:1"]


CASES: dict[str, Case] = {
    # -- MoDEConfig / Python API -----------------------------------------------------------------------------
    "config-wrong-type": Case(
        "MoDEConfig",
        "`num_layers='3'` (a string)",
        lambda t, c: _api_mode(num_layers="3"),
        "num_layers='3' must be an integer >= 1",
    ),
    "config-too-small": Case(
        "MoDEConfig",
        "`num_layers=0`",
        lambda t, c: _api_mode(num_layers=0),
        "num_layers=0 is too small; allowed: an integer >= 1",
    ),
    "config-unknown-router": Case(
        "MoDEConfig",
        "`router='dense'` (unknown name)",
        lambda t, c: _api_mode(router="dense"),
        "router='dense' is not supported; allowed: 'softmax', 'topk'",
    ),
    "config-out-of-range": Case(
        "MoDEConfig",
        "`router_final_weight=1.5`",
        lambda t, c: _api_mode(router_final_weight=1.5),
        "router_final_weight=1.5 is out of range; allowed: 0 < value < 1",
    ),
    "config-nan": Case(
        "MoDEConfig",
        "`distill_weight=nan`",
        lambda t, c: _api_mode(distill_weight=float("nan")),
        "distill_weight=nan must be a finite number",
    ),
    "config-zero-temperature": Case(
        "MoDEConfig",
        "`distill_temperature=0`",
        lambda t, c: _api_mode(distill_temperature=0),
        "distill_temperature=0 must be positive; allowed: a number > 0",
    ),
    "config-topk-too-large": Case(
        "MoDEConfig",
        "`router='topk', top_k=5, num_layers=3`",
        lambda t, c: _api_mode(router="topk", top_k=5),
        "top_k=5 is larger than num_layers=3; allowed: 1..3",
    ),
    "config-unknown-field": Case(
        "MoDEConfig",
        "`MoDEConfig.from_dict({'num_layer': 3})` (misspelt field)",
        lambda t, c: __import__("modetune").MoDEConfig.from_dict({"num_layer": 3}),
        "unknown MoDE config field(s) ['num_layer']; allowed fields: ['adapter', 'distill', ",
    ),
    "api-too-many-layers": Case(
        "Python API",
        "`get_mode_model(model, num_layers=9)` on a 4-layer model",
        lambda t, c: __import__("modetune").get_mode_model(
            __import__("transformers").AutoModelForCausalLM.from_pretrained(c["model"]), num_layers=9
        ),
        "num_layers=9 is larger than the model's 4 decoder layers; allowed: 1..4",
    ),
    "api-other-base": Case(
        "saved run",
        "`MoDEModel.from_pretrained(other_base, run)`: a run trained on another base model",
        lambda t, c: _from_pretrained(c["other_model"], c["run"]),
        "was trained on a different base model (architecture: saved 'LlamaForCausalLM', given 'Qwen2ForCausalLM'; model_type: saved 'llama', given 'qwen2'). Load it onto the base model it was trained with.",
    ),
    "run-newer-version": Case(
        "saved run",
        "`mode_config.json` written by a newer modetune, with a field this version does not know",
        lambda t, c: _load_run(_newer_config(t, c)),
        "{tmp}/run/mode_config.json was written by modetune 9.0.0, newer than this modetune 0.1.0, with settings this version cannot read (unknown MoDE config field(s) ['router_temperature']; allowed fields: [",
    ),
    "run-truncated-weights": Case(
        "saved run",
        "`mode_model.safetensors` truncated (a copy cut short)",
        lambda t, c: _load_run(_truncated_weights(t, c)),
        "{tmp}/run/mode_model.safetensors is truncated or corrupt and cannot be read (Error while deserializing header: invalid header length)",
    ),
    "run-not-a-run": Case(
        "saved run",
        "`load_run` on a directory that is not a run",
        lambda t, c: _load_run(c["model"]),
        "{model} has no run.json; pass a run directory written by `modetune train`",
    ),
    "api-data-num-examples": Case(
        "Python API",
        "`load_datasets([file], num_examples=0)`",
        lambda t, c: __import__("modetune.data", fromlist=["x"]).load_datasets([_gsm(t)], num_examples=0),
        "num_examples must be a positive number of records, got 0",
    ),
    "api-model-path": Case(
        "model path",
        "`load_model_and_tokenizer('{tmp}/nowhere')` (missing directory)",
        lambda t, c: __import__("modetune.loading", fromlist=["x"]).load_model_and_tokenizer(str(t / "nowhere")),
        "model path '{tmp}/nowhere' does not exist (resolved to {tmp}/nowhere); pass an existing transformers checkpoint directory, a .gguf file, or an embedded model name (smollm2-135m)",
    ),
    "api-general-text-not-fetched": Case(
        "Python API",
        "`general_text_documents(root=dir)` before `modetune data fetch general-text --dir dir`",
        lambda t, c: _general_text(root=t / "empty"),
        "the general-text corpus is not in {tmp}/empty (general_text/austen.jsonl is missing); run `modetune data fetch general-text` first (it needs deb.debian.org and files.pythonhosted.org, 26 MB)",
    ),
    "api-general-text-altered": Case(
        "Python API",
        "`general_text_documents('wikipedia', root=dir)` with an edited `general_text/wikipedia.jsonl`",
        lambda t, c: _general_text("wikipedia", root=t, altered="wikipedia"),
        "{tmp}/general_text/wikipedia.jsonl is not the pinned extraction (changed, or from another modetune version); run `modetune data fetch general-text` to extract it again",
    ),
    "api-general-text-part": Case(
        "Python API",
        "`general_text_documents('moby')` (unknown part)",
        lambda t, c: _general_text("moby"),
        "which='moby' is not a part of the general-text corpus; allowed: 'all', 'austen', 'wikipedia'",
    ),
    # -- modetune train ------------------------------------------------------------------------------------------
    "train-missing-data": Case(
        "modetune train",
        "`--data` names a missing file",
        lambda t, c: _train(t, c, "--data", str(t / "no.jsonl")),
        "modetune train: error: training file {tmp}/no.jsonl does not exist",
    ),
    "train-empty-data": Case(
        "modetune train",
        "`--data` names an empty file",
        lambda t, c: _train(t, c, "--data", str(_write(t / "empty.jsonl", ""))),
        "modetune train: error: {tmp}/empty.jsonl: file is empty (a dataset needs at least one record)",
    ),
    "train-malformed-jsonl": Case(
        "modetune train",
        "`--data` JSONL with a malformed line 2",
        lambda t, c: _train(
            t, c, "--data", str(_write(t / "bad.jsonl", '{"prompt": "a", "completion": "b"}\n{oops\n'))
        ),
        "modetune train: error: {tmp}/bad.jsonl, line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2) (JSON Lines needs exactly one complete JSON object per line)",
    ),
    "train-wrong-field-type": Case(
        "modetune train",
        "`--data` record whose `completion` is a number",
        lambda t, c: _train(t, c, "--data", str(_write(t / "typed.jsonl", '{"prompt": "2+2?", "completion": 4}\n'))),
        "modetune train: error: {tmp}/typed.jsonl, line 1: field 'completion' must be a string, got a JSON number",
    ),
    "train-empty-text": Case(
        "modetune train",
        '`--data` plain-text file (`{"text": ...}` records) with an empty document on line 2',
        lambda t, c: _train(t, c, "--data", str(_write(t / "docs.jsonl", '{"text": "A story."}\n{"text": " "}\n'))),
        "modetune train: error: {tmp}/docs.jsonl, line 2: field 'text' is empty (it must contain text)",
    ),
    "train-non-utf8": Case(
        "modetune train",
        "`--data` file that is not UTF-8 (Latin-1 bytes)",
        lambda t, c: _train(
            t, c, "--data", str(_write(t / "latin1.jsonl", b'{"prompt": "caf\xe9", "completion": "x"}\n'))
        ),
        "modetune train: error: {tmp}/latin1.jsonl: is not UTF-8 text (invalid continuation byte at byte 15) (save it as UTF-8)",
    ),
    "train-batch-size-zero": Case(
        "modetune train",
        "`--batch-size 0`",
        lambda t, c: _train(t, c, "--batch-size", "0"),
        "modetune train: error: batch_size=0 must be at least 1",
    ),
    "train-negative-lr": Case(
        "modetune train",
        "`--learning-rate -1`",
        lambda t, c: _train(t, c, "--learning-rate", "-1"),
        "modetune train: error: learning_rate=-1.0 must be positive",
    ),
    "train-not-a-number": Case(
        "modetune train",
        "`--lora-r abc` (not a number)",
        lambda t, c: _train(t, c, "--lora-r", "abc"),
        "modetune train: error: argument --lora-r: invalid int value: 'abc'",
    ),
    "train-unknown-peft": Case(
        "modetune train",
        "`--peft prefix` (unknown name)",
        lambda t, c: _train(t, c, "--peft", "prefix"),
        "modetune train: error: peft='prefix' is not supported; allowed: lora, dora, none",
    ),
    "train-unknown-scheduler": Case(
        "modetune train",
        "`--lr-scheduler sawtooth`",
        lambda t, c: _train(t, c, "--lr-scheduler", "sawtooth"),
        "modetune train: error: lr_scheduler='sawtooth' is not supported; allowed: linear, cosine, ",
    ),
    "train-too-many-layers": Case(
        "modetune train",
        "`--num-layers 9` on a 4-layer model",
        lambda t, c: _train(t, c, "--num-layers", "9"),
        "modetune train: error: num_layers=9 is larger than the model's 4 decoder layers; allowed: 1..4",
    ),
    "train-unknown-model": Case(
        "modetune train",
        "`--model no-such-model` (unknown name, not cached)",
        lambda t, c: _train(t, c, "--model", "no-such-model"),
        "modetune train: error: model 'no-such-model' is not a local directory, GGUF file or embedded model name (smollm2-135m), and it is not in the local Hugging Face cache",
    ),
    "train-gguf-not-a-model": Case(
        "modetune train",
        "`--model notes.gguf`: a `.gguf` file that is not a GGUF model",
        lambda t, c: _train(t, c, "--model", str(_write(t / "notes.gguf", "just some text"))),
        "modetune train: error: {tmp}/notes.gguf is a file but not a GGUF file; pass a transformers checkpoint directory (with config.json), a .gguf file, or an embedded model name",
    ),
    "train-dir-not-a-model": Case(
        "modetune train",
        "`--model DIR`: a directory without a model",
        lambda t, c: _train(t, c, "--model", str(_write(t / "stuff" / "a.txt", "x").parent)),
        "modetune train: error: directory {tmp}/stuff is not a transformers checkpoint (no config.json) and holds no .gguf file",
    ),
    "train-resume-not-a-run": Case(
        "modetune train",
        "`--resume` into a directory that is not a run",
        lambda t, c: _train(t, c, "--resume", "--output", str(_write(t / "notrun" / "a.txt", "x").parent)),
        "modetune train: error: --resume: {tmp}/notrun is not a run directory (no run.json); start it without --resume",
    ),
    "train-stop-after-the-end": Case(
        "modetune train",
        "`--stop-after-step` at or after `--max-steps`",
        lambda t, c: _train(t, c, "--max-steps", "2", "--stop-after-step", "2"),
        "modetune train: error: --stop-after-step 2 is not before the last step (--max-steps 2); leave it out to "
        "train to the end",
    ),
    "train-labels-with-temperature": Case(
        "modetune train",
        "`--distill labels` with a temperature",
        lambda t, c: _train(t, c, "--max-steps", "1", "--distill", "labels", "--distill-temperature", "2"),
        "modetune train: error: distill_temperature=2.0 has no meaning with distill='labels' (the "
        "students learn from the labels, not a softened teacher); allowed: 1.0, or a divergence as distill",
    ),
    "train-output-is-file": Case(
        "modetune train",
        "`--output` names an existing file",
        lambda t, c: _train(t, c, "--output", str(_write(t / "out.txt", "keep"))),
        "modetune train: error: --output {tmp}/out.txt is a file, not a directory; choose another --output",
    ),
    "train-no-pad-token": Case(
        "modetune train",
        "a base model whose tokenizer has neither a pad nor an EOS token",
        _tokenizer_without_pad_or_eos,
        "modetune train: error: the tokenizer of '{tmp}/model' has neither a pad nor an EOS token; add one to its tokenizer config",
    ),
    "train-unknown-method": Case(
        "modetune train",
        "`--method moe` (not a registered method)",
        lambda t, c: _train(t, c, "--method", "moe"),
        "modetune train: error: method='moe' is not supported; allowed: mode, mod",
    ),
    # -- modetune train --method mod (MoDification) -------------------------------------------------------------
    "mod-threshold": Case(
        "modetune train --method mod",
        "`--threshold 1.5`",
        lambda t, c: _train(t, c, "--method", "mod", "--threshold", "1.5"),
        "modetune train: error: threshold=1.5 is out of range; allowed: 0 <= p < 1",
    ),
    "mod-capacity": Case(
        "modetune train --method mod",
        "`--capacity 0`",
        lambda t, c: _train(t, c, "--method", "mod", "--capacity", "0"),
        "modetune train: error: capacity=0.0 is out of range; allowed: 0 < capacity <= 1",
    ),
    "mod-operator": Case(
        "modetune train --method mod",
        "`--operator topp` (unknown name)",
        lambda t, c: _train(t, c, "--method", "mod", "--operator", "topp"),
        "modetune train: error: operator='topp' is not supported; allowed: 'threshold', 'topk', 'random'",
    ),
    "mod-target-skip-range": Case(
        "modetune train --method mod",
        "`--target-skip 1.5`",
        lambda t, c: _train(t, c, "--method", "mod", "--target-skip", "1.5"),
        "modetune train: error: target_skip=1.5 is out of range; allowed: 0 < share < 1",
    ),
    "mod-target-skip-unreachable": Case(
        "modetune train --method mod",
        "`--target-skip 0.6` when the routed layers are half the model",
        lambda t, c: _train(t, c, "--method", "mod", "--skip-first", "1", "--skip-last", "1", "--target-skip", "0.6"),
        "modetune train: error: target_skip=0.6 cannot be reached: skipping every token of the 2 routed layers skips 0.50 of the 4 layers' work",
    ),
    "mod-routed-layers": Case(
        "modetune train --method mod",
        "`--routed-layers 9` on a 4-layer model",
        lambda t, c: _train(t, c, "--method", "mod", "--routed-layers", "9"),
        "modetune train: error: routed_layers=[9] names a layer the model does not have; allowed: 0..3",
    ),
    "mod-no-routed-layer": Case(
        "modetune train --method mod",
        "`--skip-first 9`: no layer left to route",
        lambda t, c: _train(t, c, "--method", "mod", "--skip-first", "9"),
        "modetune train: error: no layer gets a router: the model has 4 decoder layers and skip_first=9, skip_last=2; lower them or pass routed_layers",
    ),
    "mod-preset": Case(
        "modetune train --method mod",
        "`--preset paper` (a MoDE preset)",
        lambda t, c: _train(t, c, "--method", "mod", "--preset", "paper"),
        "modetune train: error: --preset paper is not a preset of --method mod; allowed: default",
    ),
    # -- modetune pretrain (vanilla and Mixture-of-Modules) ------------------------------------------------------
    "pretrain-missing-corpus": Case(
        "modetune pretrain",
        "`--corpus` names a missing file",
        lambda t, c: _pretrain(t, c, "--corpus", str(t / "missing.txt")),
        "modetune pretrain: error: corpus file {tmp}/missing.txt does not exist",
    ),
    "pretrain-general-part": Case(
        "modetune pretrain",
        "`--corpus general:moby` (unknown part of the general-text corpus)",
        lambda t, c: _pretrain(t, c, "--corpus", "general:moby"),
        "modetune pretrain: error: --corpus general:moby: unknown part 'moby'; allowed: general, general:austen, general:wikipedia",
    ),
    "pretrain-arch": Case(
        "modetune pretrain",
        "`--arch moe` (unknown name)",
        lambda t, c: _pretrain(t, c, "--arch", "moe"),
        "modetune pretrain: error: --arch must be one of mom, vanilla, vanilla-gated, got 'moe'",
    ),
    "pretrain-data-offset": Case(
        "modetune pretrain",
        "`--data-offset -8` (a negative number of blocks)",
        lambda t, c: _pretrain(t, c, "--data-offset", "-8"),
        "modetune pretrain: error: --data-offset must be >= 0 blocks, got -8",
    ),
    "pretrain-heads": Case(
        "modetune pretrain",
        "`--num-heads 3` with `--hidden-size 32`",
        lambda t, c: _pretrain(t, c, "--num-heads", "3"),
        "modetune pretrain: error: --hidden-size 32 is not divisible by --num-heads 3",
    ),
    "pretrain-init-from-vanilla": Case(
        "modetune pretrain",
        "`--init-from` with `--arch vanilla`",
        lambda t, c: _pretrain(t, c, "--arch", "vanilla", "--init-from", str(c["model"])),
        "modetune pretrain: error: --init-from builds a MoM pool from a model's layers; it needs --arch mom",
    ),
    "pretrain-resume-not-a-run": Case(
        "modetune pretrain",
        "`--resume` into a directory that is not a run",
        lambda t, c: _pretrain(t, c, "--resume", "--output", str(_write(t / "notrun" / "a.txt", "x").parent)),
        "modetune pretrain: error: --resume: {tmp}/notrun is not a run directory (no run.json); start it without --resume",
    ),
    "mom-rounds-zero": Case(
        "modetune pretrain --arch mom",
        "`--num-rounds 0`",
        lambda t, c: _pretrain(t, c, "--num-rounds", "0"),
        "modetune pretrain: error: --num-rounds must be >= 1, got 0; leave it out to use --num-layers (or the --init-from model's layer count)",
    ),
    "mom-k-per-round": Case(
        "modetune pretrain --arch mom",
        "`--k-per-round 9` with 2 modules and 1 SKIP",
        lambda t, c: _pretrain(t, c, "--k-per-round", "9"),
        "modetune pretrain: error: MoMConfig.k_per_round=9 exceeds the 3 attention options left (modules not pruned plus SKIP modules); lower k_per_round or add modules",
    ),
    "mom-init-from-tokenizer": Case(
        "modetune pretrain --arch mom",
        "`--init-from MODEL` with a `--tokenizer` larger than MODEL's vocabulary",
        lambda t, c: _pretrain(t, c, "--init-from", str(c["model"]), "--tokenizer", _bigger_tokenizer(t, c)),
        "modetune pretrain: error: --tokenizer {tmp}/bigger-tokenizer has 464 tokens, more than the 454 embedding rows of --init-from {model}; pass the tokenizer of that model (--tokenizer {model})",
    ),
    "mom-router": Case(
        "modetune pretrain --arch mom",
        "`--router lstm` (unknown name)",
        lambda t, c: _pretrain(t, c, "--router", "lstm"),
        "modetune pretrain: error: --router 'lstm' is not supported; allowed: gru, linear",
    ),
    "mom-preset-arch": Case(
        "modetune pretrain --arch mom",
        "`--preset authors` with `--arch vanilla`",
        lambda t, c: _pretrain(t, c, "--arch", "vanilla", "--preset", "authors"),
        "modetune pretrain: error: --preset sets MoM options; it needs --arch mom, got --arch vanilla",
    ),
    "mom-preset-unknown": Case(
        "modetune pretrain --arch mom",
        "`--preset mine` (unknown name)",
        lambda t, c: _pretrain(t, c, "--preset", "mine"),
        "modetune pretrain: error: --preset 'mine' is not known; known: authors",
    ),
    "mom-router-temperature": Case(
        "modetune pretrain --arch mom",
        "`--router-temperature 0`",
        lambda t, c: _pretrain(t, c, "--router-temperature", "0"),
        "modetune pretrain: error: MoMConfig.router_temperature must be > 0, got 0.0",
    ),
    "gated-gate-init": Case(
        "modetune pretrain --arch vanilla-gated",
        "`--gate-init 1` (a sigmoid gate cannot start at 1)",
        lambda t, c: _pretrain(t, c, "--arch", "vanilla-gated", "--gate-init", "1"),
        "modetune pretrain: error: --gate-init must be in (0, 1), got 1.0: a sigmoid gate never reaches 0 or 1 (and its gradient vanishes near them); use e.g. 0.95 to start close to the vanilla model",
    ),
    "gated-gate-mode": Case(
        "modetune pretrain --arch vanilla-gated",
        "`--gate-mode layer` (not a gate mode)",
        lambda t, c: _pretrain(t, c, "--arch", "vanilla-gated", "--gate-mode", "layer"),
        "modetune pretrain: error: --gate-mode 'layer' is not supported; allowed: token, scalar",
    ),
    # -- modetune export -----------------------------------------------------------------------------------------
    "export-out-not-empty": Case(
        "modetune export",
        "`OUT` an existing, non-empty directory",
        lambda t, c: ["export", str(c["run"]), str(_write(t / "precious" / "thesis.txt", "keep").parent)],
        "modetune export: error: {tmp}/precious already exists and is not empty; choose a new directory (nothing was written)",
    ),
    "export-plain-model": Case(
        "modetune export",
        "`RUN` a plain transformers model directory",
        lambda t, c: ["export", str(c["model"]), str(t / "out")],
        "modetune export: error: {model} is a plain transformers model directory (a vanilla model, no MoDE/MoD/MoM); it loads without modetune as it is: nothing to export",
    ),
    "export-not-a-directory": Case(
        "modetune export",
        "`RUN` that does not exist",
        lambda t, c: ["export", str(t / "nowhere"), str(t / "out")],
        "modetune export: error: {tmp}/nowhere is not a directory; pass a run directory (or one of its checkpoint-N)",
    ),
    "export-bad-dtype": Case(
        "modetune export",
        "`--dtype int8`",
        lambda t, c: ["export", str(c["run"]), str(t / "out"), "--dtype", "int8"],
        "modetune export: error: argument --dtype: invalid choice: 'int8' (choose from 'float32', 'bfloat16', 'float16')",
    ),
    "pretrain-fp16-on-cpu": Case(
        "modetune pretrain",
        "`--mixed-precision fp16` on a machine without a CUDA GPU",
        lambda t, c: _pretrain(t, c, "--mixed-precision", "fp16"),
        "modetune pretrain: error: --mixed-precision fp16 needs a CUDA GPU (on CPU it would run in float32); use bf16 here",
    ),
    # -- modetune eval -------------------------------------------------------------------------------------------
    "eval-unknown-task": Case(
        "modetune eval",
        "`--task gsm9k` (unknown name)",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), task="gsm9k"),
        "modetune eval: error: unknown task 'gsm9k'; known tasks: gsm8k, svamp, ",
    ),
    "eval-model-and-run": Case(
        "modetune eval",
        "both `--model` and `--run` (or neither)",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--run", str(c["run"])),
        "modetune eval: error: pass exactly one of --model MODEL or --run RUN_DIR",
    ),
    "eval-base-without-run": Case(
        "modetune eval",
        "`--base` with `--model` (it replaces a run's base)",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--base", str(c["model"])),
        "modetune eval: error: --base replaces a run's base model; it needs --run RUN_DIR",
    ),
    "eval-missing-data": Case(
        "modetune eval",
        "`--data` names a missing test file (found before the model is loaded)",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--data", str(t / "none.json")),
        "modetune eval: error: data path '{tmp}/none.json' for task 'gsm8k' does not exist (pass an existing file or directory)",
    ),
    "eval-malformed-json": Case(
        "modetune eval",
        "`--data` test file that is not valid JSON",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--data", str(_write(t / "t.json", "[{"))),
        "modetune eval: error: {tmp}/t.json, line 1: not valid JSON (Expecting property name enclosed in double quotes at column 3)",
    ),
    "eval-limit-zero": Case(
        "modetune eval",
        "`--limit 0`",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--data", _gsm(t), "--limit", "0"),
        "modetune eval: error: --limit must be a positive number of examples, got 0",
    ),
    "eval-batch-size-zero": Case(
        "modetune eval",
        "`--batch-size 0`",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--data", _gsm(t), "--batch-size", "0"),
        "modetune eval: error: --batch-size must be at least 1, got 0",
    ),
    "eval-loglikelihood-numeric": Case(
        "modetune eval",
        "`--scoring loglikelihood` on a numeric task",
        lambda t, c: _eval(t, c, "--model", str(c["model"]), "--data", _gsm(t), "--scoring", "loglikelihood"),
        "modetune eval: error: log-likelihood scoring needs multiple-choice tasks; gsm8k have free-form numeric answers (use --scoring generate for them)",
    ),
    "eval-run-not-a-run": Case(
        "modetune eval",
        "`--run DIR`: a directory that is not a run",
        lambda t, c: _eval(t, c, "--run", str(c["model"]), "--data", _gsm(t)),
        "modetune eval: error: {model} has no run.json; pass a run directory written by `modetune train`",
    ),
    "eval-run-truncated": Case(
        "modetune eval",
        "`--run` whose `mode_model.safetensors` is truncated",
        lambda t, c: _eval(t, c, "--run", str(_truncated_weights(t, c)), "--data", _gsm(t)),
        "modetune eval: error: {tmp}/run/mode_model.safetensors is truncated or corrupt and cannot be read (Error while deserializing header: invalid header length)",
    ),
    # -- modetune compare ----------------------------------------------------------------------------------------
    "compare-missing": Case(
        "modetune compare",
        "`RUN_A` does not exist",
        lambda t, c: ["compare", str(t / "a"), str(_write(t / "b" / "x.txt", "").parent)],
        "modetune compare: error: '{tmp}/a' does not exist (pass the --output directory of a `modetune eval` run)",
    ),
    "compare-not-eval-output": Case(
        "modetune compare",
        "`RUN_A` is a directory without results.json",
        lambda t, c: ["compare", str(_write(t / "a" / "x.txt", "").parent), str(_write(t / "b" / "x.txt", "").parent)],
        "modetune compare: error: '{tmp}/a' is not an evaluation output: no predictions.jsonl in it (pass the --output directory of a `modetune eval` run)",
    ),
    "compare-bootstrap": Case(
        "modetune compare",
        "`--bootstrap 5`",
        lambda t, c: ["compare", str(t), str(t), "--bootstrap", "5"],
        "modetune compare: error: --bootstrap must be at least 100 resamples, got 5",
    ),
    # -- modetune demo -------------------------------------------------------------------------------------------
    "demo-zero-steps": Case(
        "modetune demo",
        "`--max-steps 0`",
        lambda t, c: ["demo", "--max-steps", "0", "--output", str(t / "demo")],
        "modetune demo: error: --max-steps must be at least 1, got 0",
    ),
    "demo-difficulty": Case(
        "modetune demo",
        "`--difficulty 7`",
        lambda t, c: ["demo", "--difficulty", "7", "--output", str(t / "demo")],
        "modetune demo: error: --difficulty '7' is not a level; allowed: 1, 2, 3, mixed",
    ),
    "demo-output-not-a-run": Case(
        "modetune demo",
        "`--output` a non-empty directory that is not a run (the demo would have deleted it)",
        lambda t, c: ["demo", "--output", str(_write(t / "precious" / "thesis.txt", "keep").parent)],
        "modetune demo: error: --output {tmp}/precious exists and is not a modetune run; the demo only replaces its own run directories: choose another --output",
    ),
}


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def context(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny base model, another one (same shapes, other weights), and a trained 2-step run."""
    from modetune.cli import main
    from tests.conftest import save_tiny_model_dir

    root = tmp_path_factory.mktemp("bad-inputs")
    other = save_tiny_model_dir(root / "other-model", "qwen2")
    run = root / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output", str(run), "--data", "synthetic:16:1"]
    assert main([*argv, "--max-steps", "2", "--save-steps", "0", "--loss-implementation", "chunked"]) == 0
    return {"model": tiny_model_dir, "other_model": other, "run": run}


def tree_digest(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            found[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _fill(text: str, tmp: Path, context: dict[str, Path]) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{model}", str(context["model"]))


def run_case(case: Case, tmp: Path, context: dict[str, Path], capsys: Any) -> tuple[int | None, str]:
    """(exit status or None for the API, message)."""
    from modetune.cli import main
    from modetune.errors import ModetuneError

    if case.is_cli:
        argv = case.run(tmp, context)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        return code, capsys.readouterr().err
    try:
        case.run(tmp, context)
    except ModetuneError as exc:
        return None, str(exc)
    raise AssertionError("no ModetuneError was raised")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, context, capsys):
    case = CASES[name]
    protected = (context["run"], context["model"])
    before = tree_digest(*protected)
    code, message = run_case(case, tmp_path, context, capsys)
    expected = _fill(case.message, tmp_path, context)
    assert expected in message, f"{name}: got {message!r}"
    assert "Traceback" not in message
    if case.is_cli:
        assert code == 2
        if case.area == "modetune eval" and name != "eval-run-truncated":
            # refused before any model is loaded
            assert "Loading weights" not in message and "loading model" not in message
        assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists() and not (tmp_path / "demo").exists()
    assert tree_digest(*protected) == before  # the saved run and the base model are untouched


def test_a_prompt_longer_than_the_context_is_a_warning(tmp_path, context, capsys):
    """Not a refusal (rotary models run past max_position_embeddings), but said once, with the count."""
    from modetune.cli import main

    question = "Mia has 5 apples and she buys 3 more apples at the market on a sunny day. " * 20
    data = _write(tmp_path / "long.json", f'[{{"instruction": "{question}How many?", "answer": "8"}}]')
    argv = _eval(tmp_path, context, "--model", str(context["model"]), "--data", str(data), "--max-new-tokens", "2")
    assert main(argv) == 0
    err = capsys.readouterr().err.replace("\n", " ")
    assert "1 question(s) do not fit the model's context of 64 tokens" in err and "gsm8k #0" in err


# -- the table in docs/bad-inputs.md ---------------------------------------------------------------------------
def render_table() -> str:
    lines = [
        "| # | Where | Bad input | Message (exit status 2 on the CLI; `<tmp>` is the directory of the example) |",
        "|---|---|---|---|",
    ]
    for i, (_name, case) in enumerate(sorted(CASES.items(), key=lambda kv: (kv[1].area, kv[0])), 1):
        message = case.message.replace("{tmp}", "<tmp>").replace("{model}", "<model>").replace("|", "\\|")
        message += "..." if message.endswith((", ", "[")) else ""
        what = case.what.replace("{tmp}", "<tmp>").replace("|", "\\|")
        lines.append(f"| {i} | {case.area} | {what} | `` {message} `` |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- table: generated by tests/test_bad_inputs.py -->", "<!-- end of table -->"


def test_doc_table_matches_the_cases():
    text = DOC.read_text()
    assert text.split(BEGIN)[1].split(END)[0].strip() == render_table().strip(), (
        "docs/bad-inputs.md is out of date: run `python tests/test_bad_inputs.py`"
    )
    assert len(CASES) >= 30


if __name__ == "__main__":  # rewrite the table in docs/bad-inputs.md
    from modetune.files import replace_marked_block

    replace_marked_block(DOC, BEGIN, END, f"{BEGIN}\n{render_table()}{END}", if_missing="error")
    print(f"wrote {len(CASES)} rows to {DOC}", file=sys.stderr)
