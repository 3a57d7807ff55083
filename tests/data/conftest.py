"""Fixtures for the data-layer tests: the shared data directory and tiny offline tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "### Instruction:\n### Input:\n### Response:\n",
    "Mia has 5 apples. She buys 3 more. How many apples does Mia have now?",
    "Mia has 5 + 3 = 8 apples now.\nThe answer is 8.",
    "There are 12 marbles in a box. Leo takes out 4. How many marbles are left in the box?",
    "the correct answer is true. the correct answer is false.",
    "user assistant system You are a helpful assistant.",
]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """/work/shared/data next to the repository (or $MODETUNE_SHARED_DATA); skips if absent."""
    env = os.environ.get("MODETUNE_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data directory not found at {path} (set MODETUNE_SHARED_DATA to its location)")
    return path


def _train_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 5, trainer)
    return tk


@pytest.fixture(scope="session")
def _tokenizer_object():
    return _train_tokenizer_object()


def _make(tk, eos: str):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture
def tiny_tokenizer(_tokenizer_object):
    """Byte-level BPE trained on the fly: EOS <|endoftext|>, no pad token, a ChatML-style chat template."""
    return _make(_tokenizer_object, "<|endoftext|>")


@pytest.fixture
def chatml_tokenizer(_tokenizer_object):
    """Like tiny_tokenizer but EOS is the end-of-turn token <|im_end|> (as in SmolLM2-Instruct)."""
    return _make(_tokenizer_object, "<|im_end|>")
