"""The evaluation tasks of the LLM-Adapters protocol: names, data files, gold labels and choices.

A task is recognised from its *name* (``gsm8k``, ``arc_easy``, ``siqa``, ...) plus a data file in the
LLM-Adapters JSON format (``instruction``, ``answer``). The file comes from, in this order:

1. ``--data FILE`` (one task) or ``--data TASK=FILE`` (several tasks);
2. ``--data DIR``: ``DIR/<task dir>/test.json`` where ``<task dir>`` is our name (``arc_easy``) or the
   LLM-Adapters name (``ARC-Easy``); ``DIR/dataset/<task dir>/test.json`` (an LLM-Adapters checkout);
   ``DIR/<task>.json`` / ``DIR/<task>.jsonl``;
3. the same layout under each directory of ``$MODETUNE_DATA_DIR`` (``os.pathsep``-separated), then
   ``./data``, ``./shared/data`` and ``../shared/data`` relative to the current directory.

Files we do not ship (SIQA, WinoGrande, HellaSwag) work as soon as a user points at them.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modetune.errors import DataError, ModetuneError

__all__ = [
    "GROUPS",
    "TASKS",
    "Choice",
    "EvalExample",
    "TaskSpec",
    "default_data_dirs",
    "find_task_file",
    "get_task",
    "load_task_examples",
    "parse_choices",
    "question_stem",
    "resolve_task_names",
    "select_subset",
]

_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d*)?$|^-?\.\d+$")


@dataclass(frozen=True)
class TaskSpec:
    """How one benchmark is read and scored.

    Attributes:
        name: canonical name (``arc_easy``).
        category: ``"arithmetic"`` or ``"commonsense"``.
        answer_type: ``"number"`` (last number, |pred - gold| <= 0.001), ``"letter"`` (first A-E) or
            ``"label"`` (first occurrence of one of ``labels``).
        labels: the answer labels, in order (``("answer1", ..., "answer5")``); for ``letter`` A-E.
        choice_marker: how choices are numbered in the instruction (``"Answer"`` for ``Answer1: ...``),
            ``"aqua"`` for ``(A) ...``, ``"boolean"`` for BoolQ; None for free-form numeric tasks.
        dirs: directory names the data file may live under (ours first, then LLM-Adapters').
        aliases: other accepted spellings of the name.
        max_new_tokens: default generation budget (LLM-Adapters: 256 arithmetic, 32 commonsense).
    """

    name: str
    category: str
    answer_type: str
    labels: tuple[str, ...] = ()
    choice_marker: str | None = None
    dirs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    max_new_tokens: int = 256

    @property
    def multiple_choice(self) -> bool:
        """True when the instruction lists choices, so log-likelihood scoring applies."""
        return self.choice_marker is not None


def _numeric(name: str, dirs: tuple[str, ...], aliases: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec(name, "arithmetic", "number", dirs=dirs, aliases=aliases, max_new_tokens=256)


def _labelled(name: str, marker: str, n: int, dirs: tuple[str, ...], aliases: tuple[str, ...] = ()) -> TaskSpec:
    labels = tuple(f"{marker.lower()}{i}" for i in range(1, n + 1))
    return TaskSpec(name, "commonsense", "label", labels, marker, dirs, aliases, max_new_tokens=32)


_TASK_LIST = [
    _numeric("gsm8k", ("gsm8k", "GSM8K")),
    _numeric("svamp", ("svamp", "SVAMP")),
    TaskSpec(
        "aqua",
        "arithmetic",
        "letter",
        ("A", "B", "C", "D", "E"),
        "aqua",
        ("aqua", "AQuA"),
        max_new_tokens=256,
    ),
    _numeric("multiarith", ("multiarith", "MultiArith"), ("multi_arith",)),
    _numeric("addsub", ("addsub", "AddSub"), ("add_sub",)),
    _numeric("singleeq", ("singleeq", "SingleEq"), ("single_eq",)),
    _numeric("mawps", ("mawps", "MAWPS")),
    TaskSpec("boolq", "commonsense", "label", ("true", "false"), "boolean", ("boolq", "BoolQ"), max_new_tokens=32),
    _labelled("piqa", "Solution", 2, ("piqa", "PIQA")),
    _labelled("siqa", "Answer", 5, ("siqa", "social_i_qa", "SIQA"), ("social_i_qa", "socialiqa")),
    _labelled("hellaswag", "Ending", 4, ("hellaswag", "HellaSwag")),
    _labelled("winogrande", "Option", 2, ("winogrande", "WinoGrande")),
    _labelled("arc_easy", "Answer", 5, ("arc_easy", "ARC-Easy", "arc-easy"), ("arc-e", "arc_e", "arce")),
    _labelled(
        "arc_challenge", "Answer", 5, ("arc_challenge", "ARC-Challenge", "arc-challenge"), ("arc-c", "arc_c", "arcc")
    ),
    _labelled("openbookqa", "Answer", 5, ("openbookqa", "OpenBookQA", "obqa"), ("obqa",)),
]

#: canonical name -> spec, in the order the literature reports them
TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASK_LIST}

#: group name -> member tasks (a group expands to the members whose data file can be found)
GROUPS: dict[str, tuple[str, ...]] = {
    "arithmetic": tuple(t.name for t in _TASK_LIST if t.category == "arithmetic"),
    "commonsense": tuple(t.name for t in _TASK_LIST if t.category == "commonsense"),
}
GROUPS["all"] = GROUPS["arithmetic"] + GROUPS["commonsense"]


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_LOOKUP: dict[str, str] = {}
for _t in _TASK_LIST:
    for _alias in (_t.name, *_t.aliases, *_t.dirs):
        _LOOKUP[_key(_alias)] = _t.name


def get_task(name: str) -> TaskSpec:
    """The spec for a task name or alias (case-insensitive, ``-`` = ``_``); clear error if unknown."""
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        known = ", ".join(TASKS)
        groups = ", ".join(GROUPS)
        raise ModetuneError(f"unknown task '{name}'; known tasks: {known} (groups: {groups})")
    return TASKS[canonical]


# --------------------------------------------------------------------------------------------------
# data files


def default_data_dirs() -> list[Path]:
    """Directories searched when a task has no explicit ``--data``: ``$MODETUNE_DATA_DIR``, then
    ``./data``, ``./shared/data`` and ``../shared/data`` (the project's shared data next to the repo)."""
    dirs: list[Path] = []
    env = os.environ.get("MODETUNE_DATA_DIR", "")
    dirs.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p.strip())
    cwd = Path.cwd()
    dirs.extend([cwd / "data", cwd / "shared" / "data", cwd.parent / "shared" / "data"])
    return dirs


def _candidates(task: TaskSpec, directory: Path) -> list[Path]:
    out: list[Path] = []
    for d in task.dirs:
        for base in (directory / d, directory / "dataset" / d):
            out.extend([base / "test.json", base / "test.jsonl"])
    for stem in (task.name, *task.dirs):
        out.extend([directory / f"{stem}.json", directory / f"{stem}.jsonl"])
    return out


def find_task_file(task: TaskSpec | str, data: str | Path | None = None) -> Path:
    """The test file of ``task``: ``data`` itself if it is a file, else searched under ``data`` (a
    directory) or under `default_data_dirs`. Raises a `ModetuneError` that says to pass ``--data``."""
    spec = get_task(task) if isinstance(task, str) else task
    if data is not None:
        path = Path(data).expanduser()
        if path.is_file():
            return path
        if not path.exists():
            raise DataError(
                f"data path '{path}' for task '{spec.name}' does not exist (pass an existing file or directory)"
            )
        searched = [path]
    else:
        searched = default_data_dirs()
    for directory in searched:
        if not directory.is_dir():
            continue
        for candidate in _candidates(spec, directory):
            if candidate.is_file():
                return candidate
    where = ", ".join(str(d) for d in searched)
    raise DataError(
        f"no test file found for task '{spec.name}' (looked for {spec.dirs[0]}/test.json in: {where}); "
        f"pass --data FILE (or --data {spec.name}=FILE, or a directory holding {spec.dirs[0]}/test.json), "
        "or set MODETUNE_DATA_DIR"
    )


def resolve_task_names(names: Iterable[str], data: dict[str, Path] | Path | None = None) -> list[TaskSpec]:
    """Expand names (comma lists, groups ``arithmetic``/``commonsense``/``all``) into unique specs.

    A group keeps only members whose data file can be found (``data`` as in `find_task_file`); an
    explicitly named task is always kept (a missing file is reported when it is loaded).
    """
    out: list[TaskSpec] = []
    for raw in names:
        for name in (p for p in str(raw).split(",") if p.strip()):
            if _key(name) in GROUPS:
                members = []
                for member in GROUPS[_key(name)]:
                    spec = TASKS[member]
                    where = data.get(spec.name) if isinstance(data, dict) else data
                    try:
                        find_task_file(spec, where)
                    except ModetuneError:
                        continue
                    members.append(spec)
                if not members:
                    raise DataError(f"no data file found for any task of group '{name}'; pass --data DIR")
                out.extend(members)
            else:
                out.append(get_task(name))
    unique: dict[str, TaskSpec] = {}
    for spec in out:
        unique.setdefault(spec.name, spec)
    if not unique:
        raise ModetuneError("no task given; pass --task NAME (e.g. gsm8k, boolq, arc_easy)")
    return list(unique.values())


# --------------------------------------------------------------------------------------------------
# examples


@dataclass(frozen=True)
class Choice:
    """One answer option of a multiple-choice question: its label (``answer2``) and its text."""

    label: str
    text: str


@dataclass(frozen=True)
class EvalExample:
    """One test question with its gold answer, as scored by the evaluator.

    ``index`` is the record's position in the source file, so the same (task, index, instruction)
    identifies the same question across two evaluations (used by ``modetune compare``).
    """

    task: str
    index: int
    instruction: str
    input: str
    gold: str
    source: str = ""
    choices: tuple[Choice, ...] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.index}"


def _normalise_gold(spec: TaskSpec, gold: str | None, where: str) -> str:
    if gold is None or not str(gold).strip():
        raise DataError(f"{where}: missing field 'answer' (the gold label used for scoring)")
    gold = str(gold).strip()
    if spec.answer_type == "number":
        cleaned = gold.replace(",", "")
        if not _NUMBER_RE.match(cleaned):
            raise DataError(f"{where}: answer '{gold}' is not a number (task '{spec.name}' is scored numerically)")
        return cleaned
    if spec.answer_type == "letter":
        if gold.upper() not in spec.labels:
            raise DataError(f"{where}: answer '{gold}' is not one of {'/'.join(spec.labels)} (task '{spec.name}')")
        return gold.upper()
    if gold.lower() not in spec.labels:
        raise DataError(f"{where}: answer '{gold}' is not one of {'/'.join(spec.labels)} (task '{spec.name}')")
    return gold.lower()


def load_task_examples(task: TaskSpec | str, path: str | Path, *, with_choices: bool = False) -> list[EvalExample]:
    """Read a task's test file (LLM-Adapters JSON/JSONL, or GSM8K ``question``/``#### N``) and check every
    gold answer fits the task; ``with_choices`` also parses the options (log-likelihood mode)."""
    from modetune.data.loaders import load_dataset_file

    spec = get_task(task) if isinstance(task, str) else task
    path = Path(path)
    records = load_dataset_file(path)
    examples = []
    for rec in records:
        where = f"{path}, record index {rec.index}"
        gold = _normalise_gold(spec, rec.answer, where)
        choices = None
        if with_choices:
            choices = tuple(parse_choices(spec, rec.instruction, where=where))
            if spec.answer_type != "number" and gold not in {c.label for c in choices}:
                raise DataError(f"{where}: gold answer '{gold}' is not among the parsed choices")
        examples.append(EvalExample(spec.name, rec.index, rec.instruction, rec.input, gold, str(path), choices))
    return examples


def select_subset(examples: Sequence[EvalExample], limit: int | None, seed: int = 0) -> list[EvalExample]:
    """A seeded random subset of ``limit`` examples, kept in file order (same seed -> same questions,
    so two models evaluated with the same ``--limit``/``--seed`` can be compared pairwise)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit <= 0:
        raise ModetuneError(f"--limit must be a positive number of examples, got {limit}")
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]


# --------------------------------------------------------------------------------------------------
# multiple-choice parsing

_FORMAT_LINE = re.compile(r"\n\s*Answer format:\s*(?P<labels>[^\n]*)\s*$", re.IGNORECASE)
_AQUA_PAREN = re.compile(r"\(([A-E])\)")
_AQUA_SPACED = re.compile(r"(?:^|(?<=[\s,]))([A-E])\s?\)")


def _fail_choices(where: str, problem: str) -> DataError:
    return DataError(f"{where}: {problem} (log-likelihood scoring needs the choices listed in the instruction)")


def parse_choices(task: TaskSpec | str, instruction: str, *, where: str = "instruction") -> list[Choice]:
    """The options of a multiple-choice instruction, in order.

    Formats: BoolQ -> true/false; ``Solution1: ... Solution2: ...`` (PIQA), ``Answer1: ...`` (SIQA, ARC,
    OBQA), ``Option1: ...`` (WinoGrande), ``Ending1: ...`` (HellaSwag), each followed by an
    ``Answer format: a/b/...`` line that fixes the number of options; AQuA ``Answer Choices: (A) ...
    (E) ...`` or ``The options: A ) ... , E ) ...``.
    """
    spec = get_task(task) if isinstance(task, str) else task
    marker = spec.choice_marker
    if marker is None:
        raise ModetuneError(
            f"task '{spec.name}' has free-form numeric answers, so it has no choices to score; use --scoring generate"
        )
    if marker == "boolean":
        return [Choice("true", "true"), Choice("false", "false")]
    if marker == "aqua":
        return _parse_aqua(instruction, where)

    body = instruction
    n_expected = None
    fmt = _FORMAT_LINE.search(instruction)
    if fmt:
        body = instruction[: fmt.start()]
        n_expected = len([p for p in fmt.group("labels").split("/") if p.strip()])
    positions = []
    start = 0
    i = 1
    while n_expected is None or i <= n_expected:
        m = re.compile(rf"\b{marker}{i}\s*:", re.IGNORECASE).search(body, start)
        if m is None:
            if n_expected is not None:
                raise _fail_choices(where, f"cannot find '{marker}{i}:'")
            break
        positions.append((m.start(), m.end()))
        start = m.end()
        i += 1
    if len(positions) < 2:
        raise _fail_choices(where, f"found {len(positions)} '{marker}N:' option(s), need at least 2")
    choices = []
    for k, (_, end) in enumerate(positions):
        stop = positions[k + 1][0] if k + 1 < len(positions) else len(body)
        choices.append(Choice(f"{marker.lower()}{k + 1}", body[end:stop].strip()))
    return choices


def question_stem(task: TaskSpec | str, instruction: str) -> str:
    """The instruction without its enumerated options and ``Answer format:`` line: the question a
    choice's own text answers (the context of ``--ll-style text``, as in lm-evaluation-harness)."""
    spec = get_task(task) if isinstance(task, str) else task
    fmt = _FORMAT_LINE.search(instruction)
    body = instruction[: fmt.start()] if fmt else instruction
    marker = spec.choice_marker
    cut = len(body)
    if marker == "aqua":
        for header in ("Answer Choices:", "The options:"):
            pos = body.find(header)
            if pos >= 0:
                cut = min(cut, pos)
    elif marker not in (None, "boolean"):
        m = re.search(rf"\b{marker}1\s*:", body, re.IGNORECASE)
        if m:
            cut = m.start()
    return body[:cut].strip()


def _parse_aqua(instruction: str, where: str) -> list[Choice]:
    for header, pattern in (("Answer Choices:", _AQUA_PAREN), ("The options:", _AQUA_SPACED)):
        pos = instruction.find(header)
        if pos < 0:
            continue
        tail = instruction[pos + len(header) :]
        matches = list(pattern.finditer(tail))
        letters = [m.group(1) for m in matches]
        if len(matches) < 2 or letters != ["A", "B", "C", "D", "E"][: len(letters)]:
            raise _fail_choices(where, f"cannot read the options after '{header}'")
        choices = []
        for k, m in enumerate(matches):
            stop = matches[k + 1].start() if k + 1 < len(matches) else len(tail)
            text = tail[m.end() : stop].strip().rstrip(",").strip()
            choices.append(Choice(m.group(1), text))
        return choices
    raise _fail_choices(where, "no 'Answer Choices: (A) ...' or 'The options: A ) ...' list")
