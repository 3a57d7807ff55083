"""The data layer: dataset files and synthetic problems -> `Example` records -> prompts -> SFT tensors.

    from modetune.data import load_dataset_file, build_prompt, build_sft_dataset, make_collator
    examples = load_dataset_file("train.json", require_response=True)
    train_ds = build_sft_dataset(examples, tokenizer, template="alpaca", cutoff_len=256)
    collator = make_collator(tokenizer)

`sft` (which imports torch) is loaded lazily so that loaders, templates and the generator stay cheap.
"""

from __future__ import annotations

from typing import Any

from modetune.data.loaders import FORMATS, Example, load_dataset_file, load_datasets, write_examples
from modetune.data.synthetic import generate_problems, write_problems
from modetune.data.templates import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_WITH_INPUT,
    TEMPLATES,
    alpaca_prompt,
    build_prompt,
    build_prompt_and_target,
    chat_messages,
)

_SFT_NAMES = (
    "IGNORE_INDEX",
    "SFTDataset",
    "SFTStats",
    "build_sft_dataset",
    "encode_prompt",
    "ensure_pad_token",
    "make_collator",
    "tokenize_example",
)

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_WITH_INPUT",
    "FORMATS",
    "TEMPLATES",
    "Example",
    "alpaca_prompt",
    "build_prompt",
    "build_prompt_and_target",
    "chat_messages",
    "generate_problems",
    "load_dataset_file",
    "load_datasets",
    "write_examples",
    "write_problems",
    *_SFT_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _SFT_NAMES:
        from modetune.data import sft

        return getattr(sft, name)
    raise AttributeError(f"module 'modetune.data' has no attribute {name!r}")
