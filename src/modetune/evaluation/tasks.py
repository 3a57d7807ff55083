"""The evaluation tasks of the LLM-Adapters protocol: names, data files, gold labels and choices.

A task is recognised from its *name* (``gsm8k``, ``arc_easy``, ``siqa``, ...) plus a data file in the
LLM-Adapters JSON format (``instruction``, ``answer``). The file comes from, in this order:

1. ``--data FILE`` (one task) or ``--data TASK=FILE`` (several tasks);
2. ``--data DIR``: ``DIR/<task dir>/test.json`` where ``<task dir>`` is our name (``arc_easy``) or the
   LLM-Adapters name (``ARC-Easy``); ``DIR/dataset/<task dir>/test.json`` (an LLM-Adapters checkout);
   ``DIR/<task>.json`` / ``DIR/<task>.jsonl``;
3. the same layout under each directory of ``$MODETUNE_DATA_DIR`` (``os.pathsep``-separated), then
   ``./data``, ``./shared/data`` and ``../shared/data`` relative to the current directory, then the
   data cache that ``modetune data fetch TASK`` fills (``~/.cache/modetune/data``).

HellaSwag (too large to pin) works as soon as a user points at its file. Any other LLM-Adapters-format
file is scored through a custom task: `custom_task` (``--task NAME --answer-type number|letter|label``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modetune.data.fetch import data_cache_dir, data_dir_entries, fetchable_names
from modetune.data.loaders import load_dataset_file
from modetune.errors import ConfigError, DataError, ModetuneError

__all__ = [
    "GROUPS",
    "TASKS",
    "Choice",
    "EvalExample",
    "TaskSpec",
    "blank_sentence",
    "custom_task",
    "default_data_dirs",
    "find_task_file",
    "get_task",
    "infer_labels",
    "load_task_examples",
    "parse_choices",
    "question_stem",
    "register_task",
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
        blank: the question is a sentence with a ``_`` blank that each option fills (WinoGrande), so
            the ``partial`` log-likelihood style applies (and is its default).
        prefix: the instruction's fixed task preamble, removed to get the bare sentence.
    """

    name: str
    category: str
    answer_type: str
    labels: tuple[str, ...] = ()
    choice_marker: str | None = None
    dirs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    max_new_tokens: int = 256
    blank: bool = False
    prefix: str = ""

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
    TaskSpec(
        "winogrande",
        "commonsense",
        "label",
        ("option1", "option2"),
        "Option",
        ("winogrande", "WinoGrande"),
        max_new_tokens=32,
        blank=True,
        prefix="Please choose the correct answer to fill in the blank to complete the given sentence:",
    ),
    _labelled("arc_easy", "Answer", 5, ("arc_easy", "ARC-Easy", "arc-easy"), ("arc-e", "arc_e", "arce")),
    _labelled(
        "arc_challenge", "Answer", 5, ("arc_challenge", "ARC-Challenge", "arc-challenge"), ("arc-c", "arc_c", "arcc")
    ),
    _labelled("openbookqa", "Answer", 5, ("openbookqa", "OpenBookQA", "obqa"), ("obqa",)),
    # MathQA (LLM-Adapters' dataset/mathqa): 'The options: A ) 38 , B ) 27.675 , ...', gold letter A-E.
    # Not in the arithmetic group: the literature's arithmetic averages do not include it.
    TaskSpec("mathqa", "arithmetic", "letter", ("A", "B", "C", "D", "E"), "aqua", ("mathqa", "MathQA"), ("math_qa",)),
]
_NOT_IN_GROUPS = {"mathqa"}

#: canonical name -> spec, in the order the literature reports them
TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASK_LIST}

#: group name -> member tasks (a group expands to the members whose data file can be found)
GROUPS: dict[str, tuple[str, ...]] = {
    "arithmetic": tuple(t.name for t in _TASK_LIST if t.category == "arithmetic" and t.name not in _NOT_IN_GROUPS),
    "commonsense": tuple(t.name for t in _TASK_LIST if t.category == "commonsense" and t.name not in _NOT_IN_GROUPS),
}
GROUPS["all"] = GROUPS["arithmetic"] + GROUPS["commonsense"]


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_LOOKUP: dict[str, str] = {}
for _t in _TASK_LIST:
    for _alias in (_t.name, *_t.aliases, *_t.dirs):
        _LOOKUP[_key(_alias)] = _t.name
_BUILTIN = frozenset(_LOOKUP)


ANSWER_TYPES = ("number", "letter", "label")


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make `get_task` know ``spec`` (a custom task); a built-in task's name is refused."""
    existing = _LOOKUP.get(_key(spec.name))
    if existing is not None and TASKS[existing] != spec and existing in _BUILTIN:
        raise ConfigError(f"task '{spec.name}' is a built-in task; give the custom task another name")
    TASKS[spec.name] = spec
    for alias in (spec.name, *spec.aliases):
        _LOOKUP[_key(alias)] = spec.name
    return spec


def custom_task(name: str, answer_type: str, choices: Sequence[str] | None = None) -> TaskSpec:
    """A task for any LLM-Adapters-format file, scored by the LLM-Adapters rules of ``answer_type``.

    * ``number``: last number in the generation, ``|pred - gold| <= 0.001``;
    * ``letter``: first capital among ``choices`` (default A-E); the options are read from
      ``Answer Choices: (A) ...`` or ``The options: A ) ...`` for log-likelihood scoring;
    * ``label``: first occurrence of one of ``choices`` (e.g. ``answer1,answer2,answer3``). Labels of
      the form ``<word>N`` are options listed as ``Word1: ... Word2: ...`` in the instruction
      (as in the commonsense files); other labels (``yes,no``) are scored as the choice texts themselves.

    The spec is registered (`register_task`), so the name works everywhere a task name does.
    """
    if answer_type not in ANSWER_TYPES:
        raise ConfigError(f"--answer-type must be one of {', '.join(ANSWER_TYPES)}, got '{answer_type}'")
    key = _key(name)
    if not key or not re.fullmatch(r"[a-z0-9_.]+", key):
        raise ConfigError(f"custom task name '{name}' must be letters, digits, '_' or '.'")
    if key in _BUILTIN or key in GROUPS:
        raise ConfigError(
            f"'{name}' is a built-in task or group; drop --answer-type to use it, or name the custom task differently"
        )
    labels = tuple(c.strip() for c in (choices or ()) if c.strip())
    if answer_type == "number":
        if labels:
            raise ConfigError("--choices does not apply to --answer-type number")
        return register_task(TaskSpec(key, "custom", "number", dirs=(key,), max_new_tokens=256))
    if answer_type == "letter":
        labels = tuple(label.upper() for label in labels) or ("A", "B", "C", "D", "E")
        if not all(re.fullmatch(r"[A-Z]", label) for label in labels):
            raise ConfigError(f"--choices for --answer-type letter must be single letters, got {','.join(labels)}")
        return register_task(TaskSpec(key, "custom", "letter", labels, "aqua", (key,), max_new_tokens=256))
    if len(labels) < 2:
        raise ConfigError(
            "--answer-type label needs at least two labels: --choices answer1,answer2,... (or a file whose "
            "instructions end with 'Answer format: a/b/...')"
        )
    labels = tuple(label.lower() for label in labels)
    m = [re.fullmatch(r"([a-z]+)(\d+)", label) for label in labels]
    if (
        all(m)
        and len({x.group(1) for x in m if x}) == 1
        and [int(x.group(2)) for x in m if x] == list(range(1, len(labels) + 1))
    ):
        marker = m[0].group(1).capitalize()  # type: ignore[union-attr]
    else:
        marker = "labels"
    return register_task(TaskSpec(key, "custom", "label", labels, marker, (key,), max_new_tokens=32))


def infer_labels(path: str | Path) -> list[str]:
    """The answer labels a file announces in its ``Answer format: a/b/...`` lines (first-seen order)."""
    labels: dict[str, None] = {}
    for rec in load_dataset_file(path):
        fmt = _FORMAT_LINE.search(rec.instruction)
        if fmt:
            labels.update(dict.fromkeys(p.strip() for p in fmt.group("labels").split("/") if p.strip()))
    return list(labels)


def get_task(name: str) -> TaskSpec:
    """The spec for a task name or alias (case-insensitive, ``-`` = ``_``); clear error if unknown."""
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        known = ", ".join(TASKS)
        groups = ", ".join(GROUPS)
        raise ModetuneError(
            f"unknown task '{name}'; known tasks: {known} (groups: {groups}); to score another LLM-Adapters-format "
            "file, name it with --answer-type number|letter|label and --data FILE"
        )
    return TASKS[canonical]


# --------------------------------------------------------------------------------------------------
# data files


def default_data_dirs() -> list[Path]:
    """Directories searched when a task has no explicit ``--data``: ``$MODETUNE_DATA_DIR``, then
    ``./data``, ``./shared/data`` and ``../shared/data`` (the project's shared data next to the repo),
    then the data cache of ``modetune data fetch``."""
    dirs = data_dir_entries()
    cwd = Path.cwd()
    dirs.extend([cwd / "data", cwd / "shared" / "data", cwd.parent / "shared" / "data"])
    cache = data_cache_dir()
    if cache not in dirs:
        dirs.append(cache)
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
        if path.is_file() or _is_saved_dataset(path):
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
    fetch = (
        f"run `modetune data fetch {spec.name}` to download it (pinned, sha256-checked), or "
        if spec.name in fetchable_names()
        else ""
    )
    raise DataError(
        f"no test file found for task '{spec.name}' (looked for {spec.dirs[0]}/test.json in: {where}); "
        f"{fetch}pass --data FILE (or --data {spec.name}=FILE, or a directory holding {spec.dirs[0]}/test.json)"
    )


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


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

# the format line ends the instruction; in LLM-Adapters' WinoGrande file it shares the options' line
# ("Option1: Sarah Option2: Maria Answer format: option1/option2"), elsewhere it has a line of its own
_FORMAT_LINE = re.compile(r"(?:^|\s)Answer format:\s*(?P<labels>[^\n]*?)\s*$", re.IGNORECASE)


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
        return _parse_lettered(instruction, where, spec.labels or "ABCDE")
    if marker == "labels":  # custom label task whose labels are the choice texts ("yes", "no")
        return [Choice(label, label) for label in spec.labels]

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
    elif marker not in (None, "boolean", "labels"):
        m = re.search(rf"\b{marker}1\s*:", body, re.IGNORECASE)
        if m:
            cut = m.start()
    return body[:cut].strip()


def _parse_lettered(instruction: str, where: str, letters: Sequence[str] = "ABCDE") -> list[Choice]:
    """Lettered options after ``Answer Choices:`` (``(A) x (B) y``, AQuA) or ``The options:`` (``A ) x ,
    B ) y``, AQuA and MathQA; MathQA also has ``['A ) x', 'B ) y']`` and ``A ) A ) x , B ) B ) y``).
    Letters are found in order, each after the previous one, so option texts may hold anything else."""
    for header in ("Answer Choices:", "The options:"):
        pos = instruction.find(header)
        if pos < 0:
            continue
        tail = instruction[pos + len(header) :]
        found: list[tuple[str, int, int]] = []
        at = 0
        for letter in letters:
            pattern = rf"\({letter}\)" if header == "Answer Choices:" else rf"(?<![^\s,\['\"]){letter}\s?\)"
            m = re.compile(pattern).search(tail, at)
            if m is None:
                break
            found.append((letter, m.start(), m.end()))
            at = m.end()
        if len(found) < 2:
            raise _fail_choices(where, f"cannot read the options after '{header}'")
        choices = []
        for k, (letter, _, end) in enumerate(found):
            stop = found[k + 1][1] if k + 1 < len(found) else len(tail)
            text = tail[end:stop].strip(" \t\n,'\"[]")  # separators, and MathQA's list brackets/quotes
            text = re.sub(rf"^{letter}\s?\)\s*", "", text)  # MathQA's doubled 'A ) A ) 2'
            choices.append(Choice(letter, text))
        return choices
    raise _fail_choices(where, "no 'Answer Choices: (A) ...' or 'The options: A ) ...' list")


# --------------------------------------------------------------------------------------------------
# WinoGrande: partial evaluation (lm-evaluation-harness's formulation)


def blank_sentence(task: TaskSpec | str, instruction: str, *, where: str = "instruction") -> tuple[str, str]:
    """(text before the ``_`` blank, text after it) of a fill-in-the-blank question (WinoGrande).

    lm-evaluation-harness scores WinoGrande by *partial evaluation*: the context is the sentence up to
    the blank with an option filled in, the continuation is the rest of the sentence; the option whose
    context makes the rest most likely wins. This returns the two halves of the bare sentence (task
    preamble, options and ``Answer format:`` line removed); `modetune.evaluation.pipeline` builds the
    requests as lm-eval does: ``(before + option, " " + after.strip())``.
    """
    spec = get_task(task) if isinstance(task, str) else task
    sentence = question_stem(spec, instruction)
    if spec.prefix and sentence.startswith(spec.prefix):
        sentence = sentence[len(spec.prefix) :].strip()
    if sentence.count("_") != 1:
        raise DataError(
            f"{where}: expected exactly one '_' blank in the sentence, found {sentence.count('_')} "
            "(--ll-style partial needs a fill-in-the-blank sentence; use --ll-style text)"
        )
    before, after = sentence.split("_")
    return before, after


def define_custom_tasks(
    names: Iterable[str], answer_type: str | None, choices: str | Sequence[str] | None, data: Sequence[str] | None
) -> list[TaskSpec]:
    """``modetune eval --task NAME --answer-type TYPE [--choices ...] --data FILE``: register each named
    task as a custom task (`custom_task`). Without ``--choices`` a label task reads its labels from the
    file's ``Answer format:`` lines."""
    if not answer_type:
        raise ConfigError("--choices needs --answer-type number|letter|label")
    if not data:
        raise ConfigError("a custom task (--answer-type) needs its file: --data FILE")
    labels = [c for c in choices.split(",")] if isinstance(choices, str) else list(choices or [])
    specs = []
    for raw in names:
        for name in (p.strip() for p in str(raw).split(",") if p.strip()):
            task_labels = labels
            if answer_type == "label" and not task_labels:
                files = [v.partition("=")[2] if "=" in v and not Path(v).exists() else v for v in data]
                mine = [v.partition("=")[2] for v in data if v.partition("=")[0] == name and "=" in v]
                source = Path((mine or files)[0])
                if not source.is_file():
                    raise ConfigError(
                        f"--answer-type label without --choices reads the labels from a file; {source} is not one"
                    )
                task_labels = infer_labels(source)
            specs.append(custom_task(name, answer_type, task_labels))
    return specs
