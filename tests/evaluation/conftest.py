"""Fixtures for the evaluation tests: shared data, a tiny random LM + offline tokenizer, a MoDE run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    FETCH_HINT,
    build_tiny_model,
    save_tiny_model_dir,
    shared_data_dir,
    train_tokenizer_object,
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data` (or $MODETUNE_SHARED_DATA, or the fetched cache); skips when absent."""
    path = shared_data_dir()
    if path is None or not (path / "gsm8k" / "test.json").is_file():
        pytest.skip(FETCH_HINT)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer_object(), eos_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A 4-layer random llama (hidden 32) sized for the tokenizer; long context for real prompts."""
    return build_tiny_model(
        "llama",
        vocab_size=len(tiny_tokenizer),
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.eos_token_id,
        max_position_embeddings=2048,
    )


def write_json(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


def mc_record(task_prefix: str, marker: str, choices: list[str], gold: int, question: str) -> dict:
    """An LLM-Adapters-format multiple-choice record (as for SIQA, WinoGrande, HellaSwag)."""
    body = " ".join(f"{marker}{i + 1}: {c}" for i, c in enumerate(choices))
    fmt = "/".join(f"{marker.lower()}{i + 1}" for i in range(len(choices)))
    label = f"{marker.lower()}{gold + 1}"
    return {
        "instruction": f"{task_prefix}{question}\n\n{body}\n\nAnswer format: {fmt}",
        "input": "",
        "output": f"the correct answer is {label}",
        "answer": label,
    }


@pytest.fixture(scope="session")
def user_commonsense_dir(tmp_path_factory) -> Path:
    """SIQA / WinoGrande / HellaSwag files that we do not ship, written as a user would supply them."""
    root = tmp_path_factory.mktemp("user-data")
    siqa = [
        mc_record(
            "Please choose the correct answer to the question: ",
            "Answer",
            ["go home", "eat lunch", "call a friend"],
            i % 3,
            f"Quinn was hungry at noon number {i}. What will Quinn want to do next?",
        )
        for i in range(6)
    ]
    wino = [
        mc_record(
            "Please choose the correct answer to fill in the blank to complete the given sentence: ",
            "Option",
            ["Sarah", "Maria"],
            i % 2,
            f"Sarah was a better runner than Maria in race {i}, so _ won.",
        )
        for i in range(6)
    ]
    hella = [
        mc_record(
            "Please choose the correct ending to complete the given sentence: ",
            "Ending",
            ["he sits down.", "he jumps up.", "he runs away.", "he falls asleep."],
            i % 4,
            f"A man walks into room {i} and",
        )
        for i in range(6)
    ]
    write_json(root / "social_i_qa" / "test.json", siqa)  # LLM-Adapters directory name
    write_json(root / "winogrande" / "test.json", wino)
    write_json(root / "hellaswag.json", hella)  # flat NAME.json layout
    return root


@pytest.fixture(scope="session")
def mode_run_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved MoDE run (tiny base in its own dir + MoDE weights + run.json), as `modetune train` writes."""
    from transformers import AutoModelForCausalLM

    from modetune.mode import get_mode_model
    from modetune.runs import write_run_info

    root = tmp_path_factory.mktemp("mode-run")
    base_dir = save_tiny_model_dir(root / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(0)
    mode = get_mode_model(base, num_layers=2)
    with torch.no_grad():  # move the router away from its init so the ensemble differs from the base
        for p in mode.router.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    run_dir = root / "run"
    mode.save_pretrained(run_dir)
    train_file = write_json(
        root / "train.json",
        [
            {"instruction": "There are 12 marbles in a box. Leo takes out 4. How many are left?", "output": "8"},
            {"instruction": "Mia has 5 apples.  She buys 3 more. How many apples does Mia have now?", "output": "8"},
        ],
    )
    write_run_info(
        run_dir,
        {
            "base_model": {"spec": str(base_dir), "path": str(base_dir), "kind": "directory"},
            "train_files": [str(train_file)],
        },
    )
    return run_dir


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
