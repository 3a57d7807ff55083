"""Dataset files -> a list of `Example` records.

Every supported file format is read into the same frozen `Example` so that the rest of modetune
(prompt templates, tokenization, evaluation) never looks at raw JSON. A file is first read as a
*container* (a JSON array of objects, or JSON Lines with one object per line) and then each object is
validated against a *record format*:

=====================  =========================================================================
format                 record keys
=====================  =========================================================================
``alpaca``             ``instruction`` (required), ``input``, ``output``, ``answer`` (LLM-Adapters)
``gsm8k``              ``question``, ``answer`` = worked solution ending in ``#### N`` (OpenAI GSM8K)
``prompt_completion``  ``prompt``, ``completion``, optional ``answer``
``chat``               ``messages`` = list of ``{"role", "content"}``, optional ``answer``
``text``               ``text`` = a document (TRL's language-modeling records): no prompt, every token
                       is a target; other keys (``title``, ``source``) are ignored
=====================  =========================================================================

With ``format="auto"`` the record format is taken from the keys of the first record, so an
LLM-Adapters-style file may be JSON *or* JSONL, and so on. Hugging Face datasets (a ``Dataset`` object,
a ``save_to_disk`` directory, Parquet/Arrow/CSV files, a hub name already in the local cache) are read
through `modetune.data.hf` into the same records; ``columns`` renames columns to the fields above. Every problem in a file is a `DataError`
that names the file and the JSONL line number (1-based) or the JSON-array record index (0-based).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.data.hf import _is_datasets_object, is_hf_source, load_hf_rows, parse_columns
from modetune.errors import DataError

__all__ = [
    "FORMATS",
    "Example",
    "load_dataset_file",
    "load_datasets",
    "write_examples",
]

#: record formats understood by `load_dataset_file` (plus "auto")
FORMATS = ("alpaca", "gsm8k", "prompt_completion", "chat", "text")
_FORMAT_ALIASES = {
    "auto": "auto",
    "alpaca": "alpaca",
    "llm-adapters": "alpaca",
    "llm_adapters": "alpaca",
    "gsm8k": "gsm8k",
    "prompt_completion": "prompt_completion",
    "prompt-completion": "prompt_completion",
    "chat": "chat",
    "messages": "chat",
    "text": "text",
    "plain_text": "text",
    "plain-text": "text",
}
_CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One supervised record, whatever file format it came from.

    Both prompt styles can be built from any record (see `modetune.data.templates`):

    * Alpaca: ``instruction`` (+ ``input`` when non-empty) -> ``### Response:`` -> ``response``.
    * Chat template: `prompt_messages()` (the chat history, or a single user turn made of
      ``instruction`` + ``input``) -> assistant turn ``response``.

    Attributes:
        instruction: the task text (the question). Never empty, except in a plain-text record.
        input: optional extra context; "" when absent. For chat records: the turns before the last
            user message, rendered as "Role: content" lines (so an Alpaca prompt keeps the history).
        response: the training target. May be "" in evaluation-only files (no gold text); the SFT
            builder refuses such records. For LLM-Adapters *arithmetic test* files this is a
            model-written rationale, not a gold solution: use `answer` as the label there.
        answer: the short gold answer used for scoring ("72", "true", "B", "answer3"), or None.
        source: where the record came from (a file path, or "synthetic/<split>").
        index: 0-based position of the record in its source (JSON-array index, or the n-th
            non-blank JSONL line).
        messages: for chat-format records, the conversation *before* the final assistant turn
            (system/user/assistant dicts); None for single-turn records.
        metadata: free-form extra data (e.g. the operation trace of a synthetic problem). Not part of
            equality or hashing.
        plain_text: a ``{"text": ...}`` record: ``response`` is the document, learnt whole with no prompt
            or template (general text, e.g. for a depth conversion that should stay close to the base model).
    """

    instruction: str
    input: str = ""
    response: str = ""
    answer: str | None = None
    source: str = ""
    index: int = 0
    messages: tuple[Mapping[str, str], ...] | None = field(default=None, compare=False, hash=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    plain_text: bool = False

    @property
    def user_message(self) -> str:
        """The single user turn that carries instruction and input (chat form of a single-turn record)."""
        if self.input:
            return f"{self.instruction}\n\n{self.input}"
        return self.instruction

    def prompt_messages(self) -> list[dict[str, str]]:
        """Chat messages for the prompt part, ready for ``tokenizer.apply_chat_template``."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.user_message}]

    def to_record(self, include_metadata: bool = False) -> dict[str, Any]:
        """The LLM-Adapters form ``{instruction, input, output, answer}`` (what `write_examples` writes);
        ``{text}`` for a plain-text record."""
        if self.plain_text:
            return {"text": self.response}
        record: dict[str, Any] = {
            "instruction": self.instruction,
            "input": self.input,
            "output": self.response,
        }
        if self.answer is not None:
            record["answer"] = self.answer
        if include_metadata and self.metadata:
            record["meta"] = dict(self.metadata)
        return record


# --------------------------------------------------------------------------------------------------
# container reading


@dataclass(frozen=True)
class _Raw:
    """One parsed JSON object and where it was in the file (for error messages)."""

    obj: Any
    index: int  # 0-based record position
    where: str  # "line 12" or "record index 11"


def _fail(path: Path, where: str | None, problem: str, fix: str = "") -> DataError:
    location = f"{path}" if where is None else f"{path}, {where}"
    message = f"{location}: {problem}"
    if fix:
        message += f" ({fix})"
    return DataError(message)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: dataset file not found (check the path; it is resolved from {Path.cwd()})")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .json or .jsonl dataset file")
    try:
        # utf-8-sig: tolerate a byte-order mark written by some editors
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(path, None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})", "save it as UTF-8") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path, text: str) -> list[_Raw]:
    rows: list[_Raw] = []
    # split on "\n" only: str.splitlines() would also break at U+2028 etc., which JSON strings may contain raw
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) carry no record
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(
                path,
                where,
                f"not valid JSON ({exc.msg} at column {exc.colno})",
                "JSON Lines needs exactly one complete JSON object per line",
            ) from exc
        rows.append(_Raw(obj, len(rows), where))
    return rows


def _read_json_array(path: Path, text: str) -> list[_Raw]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"line {exc.lineno}", f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict):
        raise _fail(
            path,
            None,
            "top level is a JSON object, expected a JSON array of records",
            "wrap the records in [...], or write one object per line in a .jsonl file",
        )
    if not isinstance(data, list):
        raise _fail(path, None, f"top level is a JSON {_json_type(data)}, expected a JSON array of records")
    return [_Raw(obj, i, f"record index {i}") for i, obj in enumerate(data)]


def _read_container(path: Path) -> list[_Raw]:
    """Parse a file into raw records; JSON array vs JSONL is decided from the extension and content.

    ``.jsonl`` is always JSON Lines. Any other extension is parsed as one JSON document first; if that
    fails and the text does not start with ``[``, it is read as JSON Lines (a JSONL file named .json).
    """
    text = _read_text(path)
    stripped = text.strip()
    if not stripped:
        raise _fail(path, None, "file is empty", "a dataset needs at least one record")
    if path.suffix.lower() == ".jsonl":
        rows = _read_jsonl(path, text)
    elif stripped[0] == "[":
        rows = _read_json_array(path, text)
    else:
        try:
            json.loads(text)
        except json.JSONDecodeError:
            rows = _read_jsonl(path, text)  # several objects, one per line
        else:
            rows = _read_json_array(path, text)  # one JSON value that is not an array: raises
    if not rows:
        raise _fail(path, None, "contains no records", "a dataset needs at least one record")
    return rows


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# record validation


class _Record:
    """Typed field access on one raw record, raising DataErrors that name file and location."""

    def __init__(self, path: Path, raw: _Raw):
        self.path = path
        self.raw = raw
        if not isinstance(raw.obj, dict):
            raise self.error(f"record is a JSON {_json_type(raw.obj)}, expected an object with named fields")
        self.obj: dict[str, Any] = raw.obj

    def error(self, problem: str, fix: str = "") -> DataError:
        return _fail(self.path, self.raw.where, problem, fix)

    def string(self, key: str, *, required: bool, nonempty: bool, default: str = "") -> str:
        if key not in self.obj:
            if required:
                present = ", ".join(sorted(self.obj)) or "none"
                raise self.error(f"missing field '{key}'", f"fields present: {present}")
            return default
        value = self.obj[key]
        if not isinstance(value, str):
            raise self.error(f"field '{key}' must be a string, got a JSON {_json_type(value)}")
        if nonempty and not value.strip():
            raise self.error(f"field '{key}' is empty", "it must contain text")
        return value

    def answer(self, key: str = "answer") -> str | None:
        """Optional short answer: a string, or a number (converted, integers without '.0')."""
        if key not in self.obj or self.obj[key] is None:
            return None
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(f"field '{key}' must be a string or a number, got a JSON {_json_type(value)}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)


_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"^-?\d+(?:\.\d+)?$")


def _parse_alpaca(rec: _Record, source: str, require_response: bool) -> Example:
    return Example(
        instruction=rec.string("instruction", required=True, nonempty=True),
        input=rec.string("input", required=False, nonempty=False),
        response=rec.string("output", required=require_response, nonempty=require_response),
        answer=rec.answer(),
        source=source,
        index=rec.raw.index,
    )


def _parse_prompt_completion(rec: _Record, source: str, require_response: bool) -> Example:
    return Example(
        instruction=rec.string("prompt", required=True, nonempty=True),
        response=rec.string("completion", required=True, nonempty=require_response),
        answer=rec.answer(),
        source=source,
        index=rec.raw.index,
    )


def _parse_gsm8k(
    rec: _Record,
    source: str,
    keep_calculator_annotations: bool,
    answer_line: str | None,
) -> Example:
    question = rec.string("question", required=True, nonempty=True)
    solution = rec.string("answer", required=True, nonempty=True)
    if "####" not in solution:
        raise rec.error(
            "field 'answer' has no final '#### <number>' line",
            "GSM8K solutions end with a line like '#### 72'",
        )
    body, _, final = solution.rpartition("####")
    final_number = final.strip().replace(",", "")
    if not _GSM8K_FINAL.match(final_number):
        raise rec.error(f"final answer '#### {final.strip()}' is not a number")
    if not keep_calculator_annotations:
        body = _CALC_ANNOTATION.sub("", body)
    body = body.rstrip()
    if answer_line is None:
        final_text = f"#### {final.strip()}"
        response = f"{body}\n{final_text}" if body else final_text
    else:
        final_text = answer_line.format(answer=final_number)
        response = f"{body}\n{final_text}" if body else final_text
    return Example(
        instruction=question,
        response=response,
        answer=final_number,
        source=source,
        index=rec.raw.index,
    )


def _parse_chat(rec: _Record, source: str, require_response: bool) -> Example:
    if "messages" not in rec.obj:
        present = ", ".join(sorted(rec.obj)) or "none"
        raise rec.error("missing field 'messages'", f"fields present: {present}")
    messages = rec.obj["messages"]
    if not isinstance(messages, list):
        raise rec.error(f"field 'messages' must be a list, got a JSON {_json_type(messages)}")
    if not messages:
        raise rec.error("field 'messages' is an empty list", "it needs at least a user message")
    clean: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise rec.error(f"messages[{i}] must be an object with 'role' and 'content', got a JSON {_json_type(msg)}")
        for key in ("role", "content"):
            if key not in msg:
                raise rec.error(f"messages[{i}] is missing '{key}'")
            if not isinstance(msg[key], str):
                raise rec.error(f"messages[{i}].{key} must be a string, got a JSON {_json_type(msg[key])}")
        if msg["role"] not in _CHAT_ROLES:
            raise rec.error(f"messages[{i}].role is '{msg['role']}'", f"use one of {', '.join(_CHAT_ROLES)}")
        if not msg["content"].strip():
            raise rec.error(f"messages[{i}].content is empty", "every message needs text")
        clean.append({"role": msg["role"], "content": msg["content"]})

    if clean[-1]["role"] == "assistant":
        prompt, response = clean[:-1], clean[-1]["content"]
    elif require_response:
        raise rec.error(
            f"last message has role '{clean[-1]['role']}'",
            "for training the last message must be the assistant's answer",
        )
    else:
        prompt, response = clean, ""
    user_turns = [m for m in prompt if m["role"] == "user"]
    if not user_turns:
        raise rec.error("no user message before the final assistant message")
    if prompt[-1]["role"] != "user":
        raise rec.error(
            f"the message before the answer has role '{prompt[-1]['role']}'",
            "the prompt part must end with a user message",
        )
    # Alpaca view of a conversation: the last user turn is the instruction, earlier turns the input.
    history = prompt[:-1]
    context = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in history)
    return Example(
        instruction=prompt[-1]["content"],
        input=context,
        response=response,
        answer=rec.answer(),
        source=source,
        index=rec.raw.index,
        messages=tuple(prompt),
    )


def _parse_text(rec: _Record, source: str) -> Example:
    return Example(
        instruction="", response=rec.string("text", required=True, nonempty=True), source=source,
        index=rec.raw.index, plain_text=True,
    )  # fmt: skip


def _detect_format(path: Path, first: _Raw) -> str:
    if not isinstance(first.obj, dict):
        raise _fail(
            path, first.where, f"record is a JSON {_json_type(first.obj)}, expected an object with named fields"
        )
    keys = set(first.obj)
    if "messages" in keys:
        return "chat"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "question" in keys and "answer" in keys:
        return "gsm8k"
    if "text" in keys:
        return "text"
    present = ", ".join(sorted(keys)) or "none"
    raise _fail(
        path,
        first.where,
        f"cannot tell the dataset format from the fields ({present})",
        "expected instruction/input/output/answer, question/answer (GSM8K), prompt/completion, messages, or text; "
        "or pass format= explicitly",
    )


# --------------------------------------------------------------------------------------------------
# public API


def _hf_value(value: Any) -> Any:
    """A ``datasets`` cell as a JSON-file value: numbers as text (integers without '.0'), None dropped."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, list, dict)):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _rename_columns(path: Path, rows: list[_Raw], columns: Mapping[str, str]) -> list[_Raw]:
    """Apply a column mapping {field: column} to JSON records (checked on the first record)."""
    first = rows[0].obj if rows else {}
    if isinstance(first, dict):
        missing = [col for col in columns.values() if col not in first]
        if missing:
            raise _fail(path, rows[0].where, f"--columns names field(s) {', '.join(missing)} that the records do not have",
                        f"fields present: {', '.join(sorted(first))}")  # fmt: skip
    out = []
    for raw in rows:
        if isinstance(raw.obj, dict):
            obj = {k: v for k, v in raw.obj.items() if k not in columns.values()}
            obj.update({field: raw.obj.get(col) for field, col in columns.items()})
            raw = _Raw(obj, raw.index, raw.where)
        out.append(raw)
    return out


def load_dataset_file(
    path: str | Path | Any,
    format: str = "auto",
    *,
    require_response: bool = False,
    keep_calculator_annotations: bool = False,
    gsm8k_answer_line: str | None = "The answer is {answer}.",
    columns: str | Mapping[str, str] | None = None,
    split: str | None = None,
) -> list[Example]:
    """Load one dataset file into `Example` records, validating every record.

    Args:
        path: a ``.json`` file (JSON array of objects) or ``.jsonl`` file (one object per line).
            A ``.json`` file whose content is JSON Lines is read as JSONL.
        format: "auto" (from the keys of the first record), "alpaca" (alias "llm-adapters"),
            "gsm8k", "prompt_completion", "chat" or "text" (a document per record, learnt whole).
        require_response: set for training data: every record must have a non-empty target
            (``output``/``completion``, or a final assistant message). Evaluation files may lack one
            (e.g. ``mawps/test.json`` has empty ``output``).
        keep_calculator_annotations: GSM8K only: keep the ``<<48/2=24>>`` calculator annotations in
            the response (they are removed by default: a model should not learn to emit them).
        gsm8k_answer_line: GSM8K only: the ``#### N`` line is replaced by this line (``{answer}`` is
            the number without thousands separators), so GSM8K targets end like the synthetic ones and
            a last-number extractor finds N. ``None`` keeps the ``#### N`` line.
        columns: rename columns to modetune's fields, ``{"instruction": "question"}`` or
            ``"instruction=question,output=answer"``.
        split: for a ``DatasetDict``/hub dataset: the split (default ``train``, or the only one).

    ``path`` may also be any Hugging Face source of `modetune.data.hf` (a ``Dataset`` object, a saved
    dataset directory, a Parquet/Arrow/CSV file, a cached hub name).

    Note:
        LLM-Adapters arithmetic *test* files (gsm8k, svamp, aqua, multiarith, addsub, singleeq, mawps)
        carry a model-written rationale in ``output`` that often disagrees with ``answer``; this loader
        loads it as-is into ``response``. Only ``answer`` is a gold label there: never train on them.

    Raises:
        DataError: missing/unreadable/empty file, malformed JSON, or a bad record; the message names
            the file and the JSONL line number or JSON-array record index.
    """
    fmt = _FORMAT_ALIASES.get(str(format).lower())
    if fmt is None:
        raise DataError(f"unknown dataset format '{format}' for {path}; use one of auto, {', '.join(FORMATS)}")
    mapping = parse_columns(columns)
    if is_hf_source(path):
        hf_rows, label = load_hf_rows(path, split=split, columns=mapping)
        path = Path(label)
        rows = [
            _Raw({k: _hf_value(v) for k, v in r.items() if v is not None}, i, f"row {i}") for i, r in enumerate(hf_rows)
        ]
    else:
        path = Path(path)
        rows = _read_container(path)
        if mapping:
            rows = _rename_columns(path, rows, mapping)
    if fmt == "auto":
        fmt = _detect_format(path, rows[0])
    source = str(path)
    examples: list[Example] = []
    for raw in rows:
        rec = _Record(path, raw)
        if fmt == "alpaca":
            examples.append(_parse_alpaca(rec, source, require_response))
        elif fmt == "gsm8k":
            examples.append(_parse_gsm8k(rec, source, keep_calculator_annotations, gsm8k_answer_line))
        elif fmt == "prompt_completion":
            examples.append(_parse_prompt_completion(rec, source, require_response))
        elif fmt == "text":
            examples.append(_parse_text(rec, source))
        else:
            examples.append(_parse_chat(rec, source, require_response))
    return examples


def load_datasets(
    paths: str | Path | Sequence[str | Path],
    mix: Sequence[float] | Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    num_examples: int | None = None,
    shuffle: bool = True,
    format: str = "auto",
    require_response: bool = False,
    **load_kwargs: Any,
) -> list[Example]:
    """Load several dataset files (or Hugging Face sources, see `load_dataset_file`) and mix them into one list.

    Mixing rule:

    * ``mix=None``: concatenate all files (in the given order); then shuffle with ``seed`` unless
      ``shuffle=False``. ``num_examples`` (if given) keeps the first N after shuffling.
    * ``mix=weights`` (one non-negative weight per path, as a list or a ``{path: weight}`` dict):
      the result has ``num_examples`` records (default: the total size of all files), split across
      files in proportion to the weights (largest-remainder rounding, so the counts add up exactly).
      A file asked for fewer records than it has contributes a random subset without replacement; a
      file asked for more is repeated whole as often as fits, plus a random subset for the rest
      (oversampling). All draws use ``seed``; the mixed list is then shuffled (unless ``shuffle=False``,
      in which case files stay in order).

    The same seed always gives the same list. Extra keyword arguments go to `load_dataset_file`.
    """
    if isinstance(paths, (str, Path)) or _is_datasets_object(paths):
        paths = [paths]
    paths = [p if _is_datasets_object(p) else Path(p) for p in paths]
    if not paths:
        raise DataError("no dataset files given; pass at least one .json/.jsonl path")
    if num_examples is not None and num_examples <= 0:
        raise DataError(f"num_examples must be a positive number of records, got {num_examples}")
    weights = _mix_weights(paths, mix)
    per_file = [load_dataset_file(p, format, require_response=require_response, **load_kwargs) for p in paths]
    rng = random.Random(seed)

    if weights is None:
        out = [ex for exs in per_file for ex in exs]
        if shuffle:
            rng.shuffle(out)
        return out[:num_examples] if num_examples is not None else out

    total = num_examples if num_examples is not None else sum(len(exs) for exs in per_file)
    counts = _largest_remainder(weights, total)
    out = []
    for exs, count in zip(per_file, counts, strict=True):
        repeats, rest = divmod(count, len(exs))
        out.extend(exs * repeats)
        out.extend(rng.sample(exs, rest))
    if shuffle:
        rng.shuffle(out)
    return out


def _mix_weights(paths: list[Path], mix: Sequence[float] | Mapping[str, float] | None) -> list[float] | None:
    if mix is None:
        return None
    if isinstance(mix, Mapping):
        by_path = {str(Path(k)): v for k, v in mix.items()}
        unknown = set(by_path) - {str(p) for p in paths}
        if unknown:
            raise DataError(f"mix names files that are not in paths: {', '.join(sorted(unknown))}")
        weights = [by_path.get(str(p), 0.0) for p in paths]
    else:
        weights = list(mix)
        if len(weights) != len(paths):
            raise DataError(f"mix has {len(weights)} weights for {len(paths)} files; give one weight per file")
    for w, p in zip(weights, paths, strict=True):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise DataError(f"mix weight for {p} is {w!r}; weights must be finite numbers >= 0")
    if sum(weights) <= 0:
        raise DataError("all mix weights are 0; give at least one file a positive weight")
    return [float(w) for w in weights]


def _largest_remainder(weights: list[float], total: int) -> list[int]:
    """Split `total` into integer counts proportional to `weights` that add up to exactly `total`."""
    norm = sum(weights)
    exact = [w / norm * total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def write_examples(
    examples: Iterable[Example],
    path: str | Path,
    *,
    include_metadata: bool = False,
) -> Path:
    """Write records as LLM-Adapters ``{instruction, input, output, answer}`` objects (``{text}`` for plain text).

    ``.jsonl`` -> one object per line; anything else (normally ``.json``) -> an indented JSON array,
    like the LLM-Adapters files. Both load back with `load_dataset_file`. ``include_metadata`` adds a
    ``meta`` field (ignored by the loader). Returns the path written.
    """
    path = Path(path)
    records = [ex.to_record(include_metadata=include_metadata) for ex in examples]
    if not records:
        raise DataError(f"{path}: nothing to write (no examples)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=4) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
