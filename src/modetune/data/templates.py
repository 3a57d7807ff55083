"""Prompt templates shared by training and evaluation.

Training and evaluation must build the *same* prompt for a record, or a tuned model is scored on a
format it never saw. So both call `build_prompt`; training additionally calls
`build_prompt_and_target` to get the text the model learns to produce after the prompt.

Two templates:

* ``"alpaca"``: the Alpaca prompt exactly as LLM-Adapters uses it (with and without an input).
* ``"chat"``: the model's own chat template (``tokenizer.apply_chat_template``); the user turn is the
  instruction (+ input), or the record's own chat history; the prompt ends with the generation prompt.
"""

from __future__ import annotations

from typing import Any

from modetune.data.loaders import Example
from modetune.errors import ConfigError

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_WITH_INPUT",
    "TEMPLATES",
    "alpaca_prompt",
    "build_prompt",
    "build_prompt_and_target",
    "chat_messages",
    "chat_prompt",
]

TEMPLATES = ("alpaca", "chat")

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The LLM-Adapters Alpaca prompt; the with-input variant only when ``input`` is non-empty."""
    if input:
        return ALPACA_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_TEMPLATE.format(instruction=instruction)


def _check_chat_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None:
        raise ConfigError("template='chat' needs the model's tokenizer (pass tokenizer=...)")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"template='chat' but the tokenizer of '{name}' has no chat template; "
            "use template='alpaca' (works with any model), or set tokenizer.chat_template"
        )


def chat_messages(example: Example, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The prompt messages of a record, with ``system_prompt`` prepended if it has no system turn."""
    messages = example.prompt_messages()
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_prompt(example: Example, tokenizer: Any, system_prompt: str | None = None) -> str:
    """The chat-template prompt text, ending with the assistant generation prompt."""
    _check_chat_tokenizer(tokenizer)
    return tokenizer.apply_chat_template(
        chat_messages(example, system_prompt), tokenize=False, add_generation_prompt=True
    )


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown prompt template '{template}'; use one of {', '.join(TEMPLATES)}")


def build_prompt(
    example: Example,
    template: str = "alpaca",
    tokenizer: Any = None,
    *,
    system_prompt: str | None = None,
) -> str:
    """The prompt text for a record, used identically by training and evaluation.

    ``template="alpaca"`` ignores ``tokenizer`` and ``system_prompt`` (the Alpaca preamble plays the
    system role). ``template="chat"`` needs a tokenizer with a chat template (`ConfigError` if not).
    A plain-text record has no prompt under any template: its text is learnt as it is.
    """
    _check_template(template)
    if example.plain_text:
        return ""
    if template == "alpaca":
        return alpaca_prompt(example.instruction, example.input)
    return chat_prompt(example, tokenizer, system_prompt)


def build_prompt_and_target(
    example: Example,
    template: str = "alpaca",
    tokenizer: Any = None,
    *,
    system_prompt: str | None = None,
) -> tuple[str, str]:
    """Split a training record into (prompt, target) texts; the model learns ``target`` after ``prompt``.

    Alpaca: target = the response (the caller appends EOS). Chat: target = what the chat template
    renders after the generation prompt for the full conversation, i.e. the response plus the
    template's end-of-turn markup (e.g. ``<|im_end|>``), with trailing whitespace removed. If a
    template does not render the prompt as a prefix of the full conversation, the target falls back
    to the bare response.
    """
    prompt = build_prompt(example, template, tokenizer, system_prompt=system_prompt)
    if template == "alpaca" or example.plain_text:
        return prompt, example.response
    messages = [*chat_messages(example, system_prompt), {"role": "assistant", "content": example.response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt) :].rstrip()
    return prompt, example.response
