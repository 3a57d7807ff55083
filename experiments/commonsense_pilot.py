"""Commonsense, repaired? Issue 31's pilot: a handful of LoRA recipes on the mixed commonsense track, one seed
each, against the untuned model.

    python experiments/commonsense_pilot.py                  # the untuned model, then every unfinished recipe
    python experiments/commonsense_pilot.py --recipes balanced answer_text
    python experiments/commonsense_pilot.py --limit 100      # questions per test set (default 200)
    python experiments/commonsense_pilot.py --plan           # what is left, in hours, from measured times
    python experiments/commonsense_pilot.py --report         # only rewrite RESULTS.md's pilot block
    python experiments/commonsense_pilot.py --commands       # each recipe's training command

On the grid's commonsense track (run.py: LoRA on the LLM-Adapters BoolQ, ARC-e, ARC-c and OBQA training files
mixed 1:1:1:1, 100 steps of batch 8 at lr 1e-3) every tuned row collapses onto one answer label and none beats
the untuned SmolLM2-135M. The pilot asks whether some recipe does: a lower learning rate for longer, training
data whose gold answer sits at every position equally often, a target that names the answer's text. Each
recipe is one entry of `RECIPES` (add one there); it trains with `modetune train` like the grid's LoRA row
(the same model, LoRA flags, batch, cutoff and data mix) and differs in its own schedule and data.

The file reads top to bottom: recipes -> data -> train -> evaluate -> report. Every recipe and the untuned
model are scored by log-likelihood (text and label styles, as the grid) on the same seeded subset of `--limit`
questions per test set of BoolQ, PIQA, ARC-e, ARC-c and OBQA (the grid's 100 are among the first 200: a seeded
subset of 200 contains the subset of 100). A finished recipe writes `experiments/results/commonsense_pilot/
<recipe>/` (cell.json, metrics.jsonl, predictions.jsonl.gz per scoring and set) and is skipped afterwards;
an interrupted training resumes from its last complete checkpoint. Run directories and the rewritten training
files live outside the repository, in `$MODETUNE_EXPERIMENTS_WORK/commonsense_pilot` (run.py's work directory).

Test hook: tests/experiments/test_commonsense_pilot.py runs the whole flow on a tiny random model and tiny data
by patching `MODEL`, `COMMON`, `LORA`, `RECIPES` (fewer steps), `WORK`, `RESULTS` and run.py's `SHARED`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report as grid_report  # noqa: E402  (experiments/report.py: RESULTS.md's location, accuracy CIs, formatting)
import run as grid  # noqa: E402  (experiments/run.py: data location, training a cell, storing results)

from modetune.errors import exit_status  # noqa: E402
from modetune.files import atomic_write_text, replace_marked_block  # noqa: E402

RESULTS = HERE / "results" / "commonsense_pilot"
WORK = grid.WORK / "commonsense_pilot"
BEGIN, END = "<!-- commonsense-pilot: begin -->", "<!-- commonsense-pilot: end -->"

# -- what every recipe shares: the grid's LoRA row on the grid's commonsense track ---------------------------
MODEL = "smollm2-135m"
SEED = 0
COMMON = ["--batch-size", "8", "--cutoff-len", "256", "--save-steps", "25", "--save-total-limit", "1",
          "--logging-steps", "5"]  # fmt: skip
LORA = grid.ROWS_BY_NAME["lora"].flags  # r=32, alpha 64, dropout 0.05 on q,k,v,up,down; --num-layers 1
TRAIN_SETS = ("boolq", "arc_easy", "arc_challenge", "openbookqa")  # mixed 1:1:1:1, as the grid
TEST_SETS = grid.TRACKS["commonsense"].tasks  # boolq, piqa, arc_easy, arc_challenge, openbookqa
STYLES = ("text", "label")  # log-likelihood styles (modetune.evaluation.pipeline)
LIMIT = 200
# The three-seed commonsense run will be tested on each set's seeded subset of CONFIRMATORY questions (seed 0;
# it contains the grid's 100). The pilot never scores them: it chooses its recipe on LIMIT other questions per
# set, so the recipe is not picked on the questions that then test it.
CONFIRMATORY = 250
UNTUNED = "untuned"
BALANCE_SEED = 0  # the options' permutation and BoolQ's subsample: the same files for every recipe and seed


# -- recipes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One way to train LoRA on the mix: its schedule and how its training files are rewritten (`DATA_KINDS`)."""

    name: str
    what: str
    learning_rate: str
    steps: int
    scheduler: str
    warmup: int
    data: str = "original"

    def optim_flags(self) -> list[str]:
        return ["--max-steps", str(self.steps), "--learning-rate", self.learning_rate,
                "--lr-scheduler", self.scheduler, "--warmup-steps", str(self.warmup)]  # fmt: skip

    # what run.py's `_train` needs of a cell: key, run_dir, train_command
    @property
    def key(self) -> str:
        return f"commonsense_pilot/{self.name}"

    @property
    def run_dir(self) -> Path:
        return WORK / self.name / f"s{SEED}"

    def train_command(self, resume: bool = False) -> list[str]:
        return [
            sys.executable, "-m", "modetune", "train", "--model", MODEL, *self.optim_flags(), *COMMON,
            "--data", *map(str, data_paths(self.data)), "--data-mix", *["1"] * len(TRAIN_SETS), *LORA,
            "--seed", str(SEED), "--output", str(self.run_dir), *(["--resume"] if resume else ["--overwrite"]),
        ]  # fmt: skip


RECIPES = [
    Recipe("grid", "the grid's recipe (the reference): lr 1e-3, 100 steps, linear decay after 10 warm-up steps",
           "1e-3", 100, "linear", 10),
    Recipe("low_lr_long", "lr 2e-4 for 400 steps, cosine after 40 warm-up steps: a gentler, longer descent",
           "2e-4", 400, "cosine", 40),
    Recipe("balanced", "as low_lr_long, on balanced data: each record's options permuted so the gold answer "
           "sits at every position equally often; BoolQ subsampled to 50% true", "2e-4", 400, "cosine", 40,
           "balanced"),
    Recipe("answer_text", "as balanced, the target also names the answer's text ('the correct answer is "
           "answer2: <text>'), so LoRA learns content, not only a label", "2e-4", 400, "cosine", 40,
           "answer_text"),
]  # fmt: skip


# -- data ---------------------------------------------------------------------------------------------------
def option_spans(task: str, instruction: str) -> list[tuple[int, int]]:
    """(start, end) of each option's text in an LLM-Adapters instruction (``Answer1: ... Answer2: ...``), in
    option order, exactly the texts `parse_choices` reads."""
    from modetune.evaluation.tasks import get_task, parse_choices

    spec = get_task(task)
    spans, at = [], 0
    for i, choice in enumerate(parse_choices(spec, instruction), start=1):
        marker = re.compile(rf"\b{spec.choice_marker}{i}\s*:", re.IGNORECASE).search(instruction, at)
        assert marker is not None  # parse_choices found it
        start = marker.end()
        if choice.text:
            start += len(instruction[start:]) - len(instruction[start:].lstrip())
        if instruction[start : start + len(choice.text)] != choice.text:
            raise ValueError(f"{task}: cannot locate option {i} ({choice.text!r}) in {instruction!r}")
        spans.append((start, start + len(choice.text)))
        at = start + len(choice.text)
    return spans


def permute_options(task: str, record: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """The record with its options reordered: position i shows the original option ``order[i]``. Markers,
    separators and the format line stay as they were; the answer label and the target follow the gold text."""
    from modetune.evaluation.pipeline import ANSWER_PREFIX
    from modetune.evaluation.tasks import parse_choices

    choices = parse_choices(task, record["instruction"])
    if sorted(order) != list(range(len(choices))):
        raise ValueError(f"{order} is not a permutation of the {len(choices)} options")
    text = record["instruction"]
    for (start, end), source in reversed(list(zip(option_spans(task, text), order, strict=True))):
        text = text[:start] + choices[source].text + text[end:]
    gold = [c.label for c in choices].index(str(record["answer"]).lower())
    label = choices[order.index(gold)].label
    return {**record, "instruction": text, "output": f"{ANSWER_PREFIX} {label}", "answer": label}


def balance(records: list[dict[str, Any]], task: str, seed: int = BALANCE_SEED) -> list[dict[str, Any]]:
    """Gold answers spread evenly over the positions. Multiple choice: among the records with k options, each
    position gets the gold answer n // k or n // k + 1 times (a shuffled deck of positions), and the other
    options fill the rest in a seeded random order. BoolQ: the majority answer subsampled to the minority's
    count (file order kept). Deterministic for a seed."""
    from modetune.evaluation.tasks import get_task, parse_choices

    spec = get_task(task)
    rng = random.Random(f"{seed}:{spec.name}")
    if spec.choice_marker == "boolean":
        by_label = {
            label: [i for i, r in enumerate(records) if str(r["answer"]).lower() == label] for label in spec.labels
        }
        n = min(len(indices) for indices in by_label.values())
        kept = sorted(i for indices in by_label.values() for i in rng.sample(indices, n))
        return [dict(records[i]) for i in kept]
    groups: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(len(parse_choices(spec, record["instruction"])), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in records]
    for k, indices in sorted(groups.items()):
        deck = list(range(k)) * (len(indices) // k) + rng.sample(range(k), len(indices) % k)
        rng.shuffle(deck)
        for i, target in zip(indices, deck, strict=True):
            labels = [c.label for c in parse_choices(spec, records[i]["instruction"])]
            gold = labels.index(str(records[i]["answer"]).lower())
            others = [j for j in range(k) if j != gold]
            rng.shuffle(others)
            out[i] = permute_options(task, records[i], [*others[:target], gold, *others[target:]])
    return out


def name_answer_text(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Targets that name the gold option's text after its label ("the correct answer is answer2: <text>");
    BoolQ's label is its text, so its records stay as they are."""
    from modetune.evaluation.pipeline import ANSWER_PREFIX
    from modetune.evaluation.tasks import get_task, parse_choices

    spec = get_task(task)
    if spec.choice_marker == "boolean":
        return [dict(r) for r in records]
    out = []
    for record in records:
        gold = next(c for c in parse_choices(spec, record["instruction"]) if c.label == str(record["answer"]).lower())
        out.append({**record, "output": f"{ANSWER_PREFIX} {gold.label}: {gold.text}"})
    return out


# how a recipe's training files are made from the LLM-Adapters ones ("original": used as they are)
DATA_KINDS: dict[str, Callable[[list[dict[str, Any]], str], list[dict[str, Any]]] | None] = {
    "original": None,
    "balanced": balance,
    "answer_text": lambda records, task: name_answer_text(balance(records, task), task),
}


def data_paths(kind: str) -> list[Path]:
    """The training files of a data kind: the shared LLM-Adapters files, or their rewrites in the work dir."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; known: {', '.join(DATA_KINDS)}")
    if DATA_KINDS[kind] is None:
        return [Path(grid._shared(name, "train.json")) for name in TRAIN_SETS]
    return [WORK / "data" / kind / f"{name}.json" for name in TRAIN_SETS]


def write_data(kind: str) -> list[Path]:
    """`data_paths(kind)`, written once (delete `WORK/data` after changing a rewrite)."""
    transform = DATA_KINDS[kind]
    paths = data_paths(kind)
    for name, path in zip(TRAIN_SETS, paths, strict=True):
        if transform is not None and not path.is_file():
            records = json.loads(Path(grid._shared(name, "train.json")).read_text(encoding="utf-8"))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(transform(records, name), ensure_ascii=False, indent=1) + "\n")
    return paths


def data_summary(paths: list[Path]) -> dict[str, Any]:
    """Per training file: its records and how often each gold label occurs."""
    summary = {}
    for name, path in zip(TRAIN_SETS, paths, strict=True):
        records = json.loads(path.read_text(encoding="utf-8"))
        summary[name] = {"records": len(records), "gold": dict(sorted(Counter(r["answer"] for r in records).items()))}
    return summary


# -- train --------------------------------------------------------------------------------------------------
def result_dir(name: str) -> Path:
    return RESULTS / name


def done(name: str, limit: int) -> bool:
    """Finished with this many questions per set (another --limit evaluates again; a trained run is reused)."""
    path = result_dir(name) / "cell.json"
    return path.is_file() and json.loads(path.read_text()).get("limit") == limit


def train(recipe: Recipe, log) -> dict[str, Any]:
    """Write the recipe's data, then train (or resume) it with `modetune train` (run.py's `_train`)."""
    write_data(recipe.data)
    stats = grid._train(recipe, log)
    run_info = json.loads((recipe.run_dir / "run.json").read_text())
    return {
        "what": recipe.what,
        "data": recipe.data,
        "command": " ".join(recipe.train_command()).replace(sys.executable, "python"),
        "train_data": data_summary(data_paths(recipe.data)),
        "trainable_parameters": run_info.get("trainable_parameters"),
        "global_step": run_info.get("global_step"),
        "train_loss": run_info.get("train_loss"),
        "step_seconds": grid._median_step_seconds(recipe.run_dir / "metrics.jsonl"),
        **stats,
    }


# -- evaluate -----------------------------------------------------------------------------------------------
def selection_file(task: str) -> Path:
    """The task's test file without its confirmatory questions (`CONFIRMATORY`), written once under `WORK`."""
    from modetune.evaluation.tasks import get_task, load_task_examples, select_subset

    source = Path(grid._shared(get_task(task).dirs[0], "test.json"))
    out = WORK / "selection" / f"{task}.json"
    if not out.is_file():
        records = json.loads(source.read_text())
        examples = load_task_examples(task, source)
        if [e.index for e in examples] != list(range(len(records))):
            raise RuntimeError(f"{source}: its examples are not its records one for one; cannot hold questions out")
        confirmatory = {e.index for e in select_subset(examples, CONFIRMATORY, seed=0)}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps([r for i, r in enumerate(records) if i not in confirmatory]))
    return out


def evaluate(name: str, load: Callable[[], tuple[Any, Any]], limit: int, train_files: list[Path], out: Path, log):
    """Log-likelihood scoring, text and label styles, of `limit` questions per test set drawn (seed 0) from its
    selection file (`selection_file`: never a confirmatory question); one evaluation output per scoring and set
    under `out` (`<out>/ll_<style>/<set>/`)."""
    import torch

    from modetune.evaluation import evaluate_model
    from modetune.evaluation.tasks import get_task

    torch.set_num_threads(int(grid._child_env()["OMP_NUM_THREADS"]))
    model, tokenizer = load()
    scores: dict[str, dict[str, Any]] = {}
    started = time.time()
    for style in STYLES:
        for task in TEST_SETS:
            spec = get_task(task)
            log(f"[{name}] evaluating {task} (ll_{style}, {limit} questions)")
            report = evaluate_model(
                model, tokenizer, [spec], data=str(selection_file(task)), limit=limit, seed=0,
                scoring="loglikelihood", ll_style=style, batch_size=16, output_dir=out / f"ll_{style}" / task,
                model_info={"recipe": name}, progress=False, train_files=[str(p) for p in train_files],
            )  # fmt: skip
            result = report.results["tasks"][spec.name]
            scores.setdefault(f"ll_{style}", {})[task] = {k: result[k] for k in ("accuracy", "n", "ci95")}
    return {"eval_seconds": round(time.time() - started, 1), "scores": scores}


def run_one(recipe: Recipe | None, limit: int, log) -> None:
    """Train (a recipe) and evaluate (a recipe, or the untuned model when None); the result directory appears
    whole, only once everything in it is written."""
    name = recipe.name if recipe else UNTUNED
    partial = result_dir(name).with_name(name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    info: dict[str, Any] = {"recipe": name, "limit": limit, "seed": SEED, "modetune_commit": grid._code_commit()}
    if recipe is not None:
        info.update(train(recipe, log))

        def load():
            from modetune.runs import load_run

            return load_run(recipe.run_dir)[:2]

        files = data_paths(recipe.data)
    else:

        def load():
            from modetune.loading import load_model_and_tokenizer

            return load_model_and_tokenizer(MODEL)

        files = data_paths("original")
    info.update(evaluate(name, load, limit, files, partial, log))
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "cell.json").write_text(json.dumps(info, indent=2) + "\n")
    if recipe is not None and (recipe.run_dir / "metrics.jsonl").is_file():
        shutil.copy2(recipe.run_dir / "metrics.jsonl", partial / "metrics.jsonl")  # the loss curve, a few kB
    grid.store_results(partial)  # predictions gzipped, no machine paths
    if result_dir(name).exists():
        shutil.rmtree(result_dir(name))
    partial.replace(result_dir(name))
    log(f"[{name}] done")


# -- plan -----------------------------------------------------------------------------------------------------
def _infos() -> dict[str, dict[str, Any]]:
    """The finished entries' cell.json, the untuned model first, then the recipes in `RECIPES` order."""
    names = [UNTUNED, *(r.name for r in RECIPES)]
    return {n: json.loads(p.read_text()) for n in names if (p := result_dir(n) / "cell.json").is_file()}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measured_costs() -> tuple[float, str, float, str]:
    """(seconds per training step, where from, evaluation seconds per question of one set with both styles,
    where from): this pilot's finished recipes, or else the grid's commonsense LoRA and untuned cells."""
    infos = _infos()
    steps = [i["step_seconds"] for i in infos.values() if i.get("step_seconds")]
    evals = [i["eval_seconds"] / (i["limit"] * len(TEST_SETS)) for i in infos.values() if i.get("eval_seconds")]
    step_from = eval_from = "this pilot"
    grid_cells = [
        p.parent for row in ("lora", "base") for p in (grid.RESULTS / "commonsense" / row).glob("s*/cell.json")
    ]
    if not steps:
        steps = [s for c in grid_cells if (s := json.loads((c / "cell.json").read_text()).get("step_seconds"))]
        step_from = "the grid's commonsense LoRA cells"
    if not evals:
        for cell in grid_cells:
            seconds = questions = 0.0
            for style in STYLES:
                for path in (cell / f"ll_{style}").glob("*/results.json"):
                    for task in json.loads(path.read_text())["tasks"].values():
                        seconds += task["seconds"]
                        questions += task["n"] if style == STYLES[0] else 0
            if questions:
                evals.append(seconds / questions)
        eval_from = "the grid's commonsense LoRA and untuned cells"
    if not steps or not evals:
        return 0.0, "nothing measured", 0.0, "nothing measured"
    return _median(steps), step_from, _median(evals), eval_from


def plan_lines(recipes: list[Recipe], limit: int) -> list[str]:
    step_s, step_from, eval_q, eval_from = measured_costs()
    if not step_s:
        return ["Nothing measured yet (no finished recipe here, no grid cell in experiments/results/commonsense)."]
    eval_h = eval_q * limit * len(TEST_SETS) / 3600
    lines, total = [], 0.0
    for name, steps in [(UNTUNED, 0), *((r.name, r.steps) for r in recipes)]:
        hours = steps * step_s / 3600 + eval_h
        state = "done" if done(name, limit) else f"{hours:.1f} h"
        total += 0.0 if done(name, limit) else hours
        lines.append(f"- {name}: {steps} steps + {limit} x {len(TEST_SETS)} questions x {len(STYLES)} styles: {state}")
    lines += [
        f"- left: {total:.1f} h of one thread ({step_s:.1f} s per step, from {step_from}; {eval_q:.2f} s per "
        f"question and set for both styles, from {eval_from})",
    ]
    return lines


# -- report ---------------------------------------------------------------------------------------------------
def _outputs(name: str, scoring: str):
    from modetune.evaluation.compare import load_eval_output

    return load_eval_output(result_dir(name) / scoring)


def _interval_text(summary: dict[str, Any]) -> str:
    low, high = summary["diff_ci95"]
    return (
        f"{100 * summary['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], {grid_report._p_text(summary['p_value'])}"
    )


def _scoring_lines(style: str, names: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """One scoring's accuracy table and per-set Δ table; and each recipe's Δ over all sets (its pooled summary)."""
    from modetune.evaluation.compare import compare_pooled

    scoring = f"ll_{style}"
    outputs = {n: _outputs(n, scoring) for n in names}
    sets = [t for t in TEST_SETS if any(r["task"] == t for out in outputs.values() for r in out.predictions)]
    lines = [
        f"#### Log-likelihood, {style}",
        "",
        "| recipe | " + " | ".join(sets) + " | average | Δ vs untuned, all sets [95% CI], p |",
        "|---|" + "---|" * len(sets) + "---|---|",
    ]
    comparisons = {}
    for name, out in outputs.items():
        texts, accs = [], []
        for task in sets:
            answers = [
                (str(r.get("id", r.get("index"))), bool(r["correct"])) for r in out.predictions if r["task"] == task
            ]
            if answers:
                acc, lo, hi = grid_report._accuracy(answers)
                texts.append(f"{grid_report._pct(acc)} [{grid_report._pct(lo)}, {grid_report._pct(hi)}]")
                accs.append(acc)
            else:
                texts.append("–")
        delta = "–"
        if name != UNTUNED and UNTUNED in outputs:
            comparisons[name] = compare_pooled([(outputs[UNTUNED], out)])
            pooled = comparisons[name]["pooled"]
            delta = f"{_interval_text(pooled)} (n = {pooled['n_paired']})"
        average = grid_report._pct(sum(accs) / len(accs)) if accs else "–"
        lines.append(f"| {name} | " + " | ".join(texts) + f" | {average} | {delta} |")
    lines += ["", "Accuracy in % [95% CI, Wilson]; Δ in points, recipe − untuned on the same questions: paired "
              "bootstrap 95% CI, exact McNemar p.", ""]  # fmt: skip
    if comparisons:
        lines += ["| Δ vs untuned per set | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for name, comparison in comparisons.items():
            per_set = comparison["tasks"]
            lines.append(
                f"| {name} | " + " | ".join(_interval_text(per_set[t]) if t in per_set else "–" for t in sets) + " |"
            )
        lines += ["", f"p per set, uncorrected for the {len(sets)} sets.", ""]
    return lines, {name: c["pooled"] for name, c in comparisons.items()}


def _collapse_lines(names: list[str]) -> list[str]:
    """The most common predicted label per set and its share: a model giving every question one label scores
    that label's base rate, whatever it learned (the grid's failure)."""
    lines = [
        "#### Most common predicted label (share of questions)",
        "",
        "| recipe | scoring | " + " | ".join(TEST_SETS) + " |",
        "|---|---|" + "---|" * len(TEST_SETS),
    ]
    for name in names:
        for style in STYLES:
            counts: dict[str, Counter] = {}
            for row in _outputs(name, f"ll_{style}").predictions:
                counts.setdefault(row["task"], Counter())[str(row.get("prediction"))] += 1
            texts = []
            for task in TEST_SETS:
                if task in counts:
                    label, count = counts[task].most_common(1)[0]
                    texts.append(f"{label} {grid_report._pct(count / counts[task].total())}")
                else:
                    texts.append("–")
            lines.append(f"| {name} | ll_{style} | " + " | ".join(texts) + " |")
    return [*lines, ""]


def _recipe_lines(infos: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| recipe | what | schedule | training data (records: gold labels) | train loss | step s | train min | eval min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        info = infos.get(recipe.name)
        if info is None:
            continue
        data = "; ".join(
            f"{name} {d['records']:,}: " + " ".join(f"{label} {count}" for label, count in d["gold"].items())
            for name, d in info.get("train_data", {}).items()
        )
        loss = info.get("train_loss")
        lines.append(
            f"| {recipe.name} | {recipe.what} | {recipe.steps} steps, lr {recipe.learning_rate} ({recipe.scheduler}, "
            f"{recipe.warmup} warm-up) | {data} | {'–' if loss is None else f'{loss:.3f}'} | "
            f"{info.get('step_seconds', '–')} | {grid_report._train_minutes(info)} | {info['eval_seconds'] / 60:.1f} |"
        )
    untuned = infos.get(UNTUNED)
    if untuned:
        lines.append(f"| {UNTUNED} | the untuned model | – | – | – | – | – | {untuned['eval_seconds'] / 60:.1f} |")
    return [*lines, ""]


def _verdict_lines(deltas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Which recipes beat the untuned model: Δ over all sets above 0 with a Holm-adjusted p below 0.05 over every
    (recipe, scoring) tried, since the pilot looks for one winner among them."""
    from modetune.evaluation.stats import holm_adjusted

    keys = list(deltas)
    adjusted = dict(zip(keys, holm_adjusted([deltas[k]["p_value"] for k in keys]), strict=True))
    winners = [f"{name} ({scoring}, Δ {100 * deltas[name, scoring]['diff']:+.1f}, Holm p = "
               f"{adjusted[name, scoring]:.3f})" for name, scoring in keys
               if deltas[name, scoring]["diff"] > 0 and adjusted[name, scoring] < 0.05]  # fmt: skip
    return [f"Recipes that beat the untuned model over all sets (Δ > 0, p Holm-adjusted over the {len(keys)} "
            f"recipe × scoring comparisons < 0.05): {'; '.join(winners) if winners else 'none'}.", ""]  # fmt: skip


def write_report() -> None:
    """Rewrite the block between `BEGIN` and `END` in RESULTS.md from the finished entries."""
    infos = _infos()
    names = list(infos)
    limits = sorted({i["limit"] for i in infos.values()})
    trained = [n for n in names if n != UNTUNED]
    lines = [BEGIN, ""]
    lines += [
        f"Finished: {len(trained)} of {len(RECIPES)} recipes ({', '.join(trained) or 'none'}), the untuned model "
        f"{'done' if UNTUNED in infos else 'not yet'}; questions per set: {', '.join(map(str, limits)) or '–'}.",
        "",
    ]
    if names:
        deltas: dict[tuple[str, str], dict[str, Any]] = {}
        for style in STYLES:
            scoring_lines, pooled = _scoring_lines(style, names)
            lines += scoring_lines
            deltas.update({(name, f"ll_{style}"): summary for name, summary in pooled.items()})
        lines += _collapse_lines(names)
        lines += ["#### Recipes", "", *_recipe_lines(infos)]
        if deltas:
            lines += _verdict_lines(deltas)
    lines.append(END)
    replace_marked_block(
        grid_report.RESULTS_MD, BEGIN, END, "\n".join(lines), heading="### Commonsense repair: the pilot\n\n"
    )


# -- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [r.name for r in RECIPES]
    parser.add_argument("--recipes", nargs="+", choices=names, default=names, metavar="NAME",
                        help=f"recipes to run, in this order (default: all: {', '.join(names)})")  # fmt: skip
    parser.add_argument("--limit", type=int, default=LIMIT, help=f"questions per test set (default {LIMIT})")
    parser.add_argument("--plan", action="store_true", help="print what is left, in hours, from measured times")
    parser.add_argument("--report", action="store_true", help="only rewrite RESULTS.md's pilot block")
    parser.add_argument("--commands", action="store_true", help="print each recipe's training command")
    args = parser.parse_args(argv)
    recipes = [r for name in args.recipes for r in RECIPES if r.name == name]
    if args.commands:
        for r in recipes:
            print(f"# {r.key}\n{' '.join(r.train_command()).replace(sys.executable, 'python')}")
        return 0
    if args.plan:
        print("\n".join(plan_lines(recipes, args.limit)))
        return 0

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    todo = [] if args.report else [r for r in [None, *recipes] if not done(r.name if r else UNTUNED, args.limit)]
    if todo:  # the untuned model first: every recipe is compared with it
        grid.require_shared_data()
    for recipe in todo:
        run_one(recipe, args.limit, log)
        write_report()
    write_report()
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "experiments/commonsense_pilot.py"))
