"""Prompt templates: exact Alpaca strings and the chat-template path."""

from __future__ import annotations

import pytest

from modetune.data import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_WITH_INPUT,
    Example,
    alpaca_prompt,
    build_prompt,
    build_prompt_and_target,
)
from modetune.errors import ConfigError, ModetuneError

# The standard public Alpaca prompt, as LLM-Adapters uses it, written out literally.
EXPECTED_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
)
EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
)


def test_alpaca_exact_strings() -> None:
    assert alpaca_prompt("Add 2 and 3.") == EXPECTED_NO_INPUT
    assert alpaca_prompt("Add the numbers.", "2 and 3") == EXPECTED_WITH_INPUT
    assert ALPACA_TEMPLATE.format(instruction="Add 2 and 3.") == EXPECTED_NO_INPUT
    assert ALPACA_TEMPLATE_WITH_INPUT.format(instruction="Add the numbers.", input="2 and 3") == EXPECTED_WITH_INPUT


def test_build_prompt_alpaca_ignores_tokenizer() -> None:
    assert build_prompt(Example("Add 2 and 3.", response="5")) == EXPECTED_NO_INPUT
    ex = Example("Add the numbers.", input="2 and 3", response="5")
    assert build_prompt(ex, "alpaca", tokenizer=object()) == EXPECTED_WITH_INPUT
    assert build_prompt_and_target(ex) == (EXPECTED_WITH_INPUT, "5")


def test_braces_in_text_are_not_format_fields() -> None:
    ex = Example("Fill {instruction} and {0}", input="{input}")
    assert "### Instruction:\nFill {instruction} and {0}\n\n### Input:\n{input}\n\n" in build_prompt(ex)


def test_chat_prompt(tiny_tokenizer) -> None:
    ex = Example("Add the numbers.", input="2 and 3", response="5")
    assert build_prompt(ex, "chat", tiny_tokenizer) == (
        "<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = build_prompt(ex, "chat", tiny_tokenizer, system_prompt="Be brief.")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    prompt, target = build_prompt_and_target(ex, "chat", tiny_tokenizer)
    assert target == "5<|im_end|>"  # the template's end of turn, trailing newline dropped
    assert prompt == build_prompt(ex, "chat", tiny_tokenizer)


def test_chat_prompt_keeps_history(tiny_tokenizer) -> None:
    history = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2 + 3?"},
    )
    ex = Example("2 + 3?", input="System: Be brief.\nUser: Hi\nAssistant: Hello!", response="5", messages=history)
    prompt = build_prompt(ex, "chat", tiny_tokenizer, system_prompt="ignored: record has its own")
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the same record still renders as an Alpaca prompt, history as input
    assert "### Input:\nSystem: Be brief.\nUser: Hi\nAssistant: Hello!\n\n" in build_prompt(ex, "alpaca")


def test_chat_needs_a_chat_template(tiny_tokenizer) -> None:
    ex = Example("q", response="a")
    tiny_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template; use template='alpaca'"):
        build_prompt(ex, "chat", tiny_tokenizer)
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        build_prompt(ex, "chat")
    with pytest.raises(ModetuneError, match="unknown prompt template 'vicuna'"):
        build_prompt(ex, "vicuna")
