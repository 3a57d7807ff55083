"""Fixtures for the data-layer tests: the shared data directory and tiny offline tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest as _root
from tests.conftest import CHAT_TEMPLATE, FETCH_HINT, train_tokenizer_object


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data next to the repository (or $MODETUNE_SHARED_DATA), else the cache of
    `modetune data fetch all`; skips with the fetch command if neither holds the files."""
    path = _root.shared_data_dir()
    if path is None:
        pytest.skip(FETCH_HINT)
    return path


@pytest.fixture(scope="session")
def _tokenizer_object():
    return train_tokenizer_object()


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
