"""Does MoDE help with a real training budget? Issue 31's experiment: run.py's question at 10x the steps.

    python experiments/long_budget.py                  # run every unfinished piece, in priority order
    python experiments/long_budget.py --only arithmetic/lora/s0
    python experiments/long_budget.py --only arithmetic/base     # the untuned model's one evaluation
    python experiments/long_budget.py --max-pieces 1   # stop after one piece (a milestone of one cell)
    python experiments/long_budget.py                  # again, beside the first: it takes the next free cell
    python experiments/long_budget.py --plan           # cells x hours from the measured step and eval times
    python experiments/long_budget.py --report         # only regenerate RESULTS.md's long-budget section
    python experiments/long_budget.py --commands       # each cell's training command
    python experiments/long_budget.py --inspect        # `modetune inspect` on the finished MoDE cells

A cell is (track, row, seed), trained for 1,000 steps on one learning-rate schedule. It is evaluated at its
milestones (steps 250, 500 and 1,000): a *piece* trains with `--stop-after-step` at the milestone (the schedule
stays the 1,000 steps'; `--resume` continues from the checkpoint bit for bit), evaluates that checkpoint and
writes `experiments/results/long/<track>/<row>/s<seed>/step<N>/` (cell.json, predictions.jsonl.gz). Finished
pieces are skipped afterwards, so the grid can stop at any moment and go on where it stopped; run directories
stay outside the repository (`$MODETUNE_EXPERIMENTS_WORK/long`). An interrupted evaluation goes on at the test
set it stopped in: the sets it finished stay in `step<N>.partial/` and are read back when their results name the
same weights (sha256 of the checkpoint's *.safetensors).

The untuned model is the reference every curve starts from: `arithmetic/base`, one piece (`step0/`) that scores
the final milestone's 1,200 questions once (greedy decoding gives it the same answers whatever the seed), run
first. LoRA's differences are taken against it, which says which test sets the budget lifts off the floor.

What is equal across rows is fixed here, as in run.py: data, steps, batch, schedule, seeds, test sets,
decoding. Rows differ only in their own flags (run.py's rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as grid  # noqa: E402  (experiments/run.py: tracks, rows, the child environment)

from modetune.errors import exit_status  # noqa: E402
from modetune.files import sha256_of  # noqa: E402
from modetune.training.lock import RunLock, RunLockedError, acquire_run_lock, read_lock_owner  # noqa: E402

RESULTS = HERE / "results" / "long"
WORK = grid.WORK / "long"
WHY = grid.WHY / "long"  # `--inspect`: the small files of `modetune inspect` on the finished runs

# -- what is equal across rows ---------------------------------------------------------------------------
# The LLM-Adapters LoRA recipe as the paper used it (lr 3e-4, 100 warm-up steps, linear decay, cutoff 256;
# LoRA r=32, alpha=64, dropout 0.05 on q, k, v, up, down) at 1,000 steps of batch 8 (8,000 examples, 0.6 of
# an epoch of the 13,473-example mix below). The 100-step grid needed lr 1e-3 to leave the floor; at ten
# times the steps the recipe's own rate is the one to test.
MAX_STEPS = 1000
MILESTONES = (250, 500, 1000)
COMMON = [
    "--model", "smollm2-135m", "--max-steps", str(MAX_STEPS), "--batch-size", "8", "--learning-rate", "3e-4",
    "--lr-scheduler", "linear", "--warmup-steps", "100", "--cutoff-len", "256", "--save-steps", "50",
    "--save-total-limit", "0", "--logging-steps", "10",
]  # fmt: skip


@dataclass(frozen=True)
class TestSet:
    """A test set: a task name, the file it is read from (None: the LLM-Adapters file of that task), the
    number of questions at intermediate milestones and at the final one (0: not evaluated there)."""

    name: str
    source: str | None
    n_intermediate: int
    n_final: int


# The generator's held-out problems, one set per level (the training mix has levels 2 and 3, plus GSM8K):
# 200 questions per level at the end (600 in all), 50 per level at the intermediate milestones (the same
# seeded subset at every milestone and for every row). The LLM-Adapters sets at the end, 100 questions each.
TEST_SETS = (
    TestSet("synthetic_l1", "synthetic:1", 50, 200),
    TestSet("synthetic_l2", "synthetic:2", 50, 200),
    TestSet("synthetic_l3", "synthetic:3", 50, 200),
    *(TestSet(t, None, 0, 100) for t in ("gsm8k", "svamp", "mawps", "addsub", "singleeq", "multiarith")),
)
TRACK = grid.TRACKS["arithmetic"]
# The variant issue 31 asks for, chosen from `modetune inspect` on seed 0's long run (RESULTS.md, "The variant"):
# distillation makes the late layers near-copies of the final layer (top-1 agreement 99%), mistakes included, and
# no router input finds what is left; trained on the labels instead, a late layer may be right where it is wrong.
VARIANT = grid.Row(
    "lora_mode_labels", "2v. LoRA + MoDE, late layers trained on the labels (--distill labels)",
    [*grid.ROWS_BY_NAME["lora_mode"].flags, "--distill", "labels"], "lora", (0, 1), tracks=("arithmetic",),
)  # fmt: skip
UNTUNED_ROW = grid.ROWS_BY_NAME["base"]  # not trained: one evaluation, the reference of LoRA's row
ROWS = [
    (dataclasses.replace(grid.ROWS_BY_NAME["lora"], baseline=UNTUNED_ROW.name), (0, 1, 2)),
    (grid.ROWS_BY_NAME["lora_mode"], (0, 1, 2)),
    (grid.ROWS_BY_NAME["paper"], (0, 1)),
    (VARIANT, (0, 1)),
]
# The variant changes one thing of row 2 (the late layers' target), so its difference from row 2 is that change's own
# effect; its difference from LoRA (its baseline) is the reader's question, as for the other rows.
ALSO_AGAINST = {VARIANT.name: "lora_mode"}
LATER = ("paper", VARIANT.name)  # after the rows that decide the question, in this order


@dataclass(frozen=True)
class Cell:
    row: grid.Row
    seed: int

    @property
    def key(self) -> str:
        return f"{TRACK.name}/{self.row.name}" + (f"/s{self.seed}" if self.row.train else "")

    @property
    def result_dir(self) -> Path:
        """The untuned model's one piece serves every seed (`Cell(UNTUNED_ROW, seed)` for any seed)."""
        return RESULTS / TRACK.name / self.row.name / (f"s{self.seed}" if self.row.train else "")

    @property
    def milestones(self) -> tuple[int, ...]:
        """The steps it is evaluated at: the untuned model once, at step 0, on the final milestone's questions."""
        return MILESTONES if self.row.train else (0,)

    @property
    def run_dir(self) -> Path:
        return WORK / TRACK.name / self.row.name / f"s{self.seed}"

    def train_command(self, resume: bool = False, stop_after: int = 0) -> list[str]:
        return [
            sys.executable, "-m", "modetune", "train", *COMMON, "--data", *TRACK.train_data, *TRACK.train_extra,
            *self.row.flags, "--seed", str(self.seed), "--output", str(self.run_dir),
            *(["--resume"] if resume else ["--overwrite"]),
            *(["--stop-after-step", str(stop_after)] if stop_after else []),
        ]  # fmt: skip

    def piece_dir(self, step: int) -> Path:
        return self.result_dir / f"step{step if self.row.train else 0}"

    def done(self, step: int) -> bool:
        return (self.piece_dir(step) / "cell.json").is_file()

    def scores_final_questions(self, step: int) -> bool:
        """Whether its piece at `step` scores the final milestone's 1,200 questions (the untuned model's one does)."""
        return step == MAX_STEPS or not self.row.train


def all_cells() -> list[Cell]:
    """Priority: the untuned reference (one evaluation), the cells that decide the question (LoRA and LoRA +
    MoDE seed by seed), then the paper's configuration, then the variant (`LATER`)."""
    cells = [Cell(row, seed) for row, seeds in ROWS for seed in seeds]
    order = [r.name for r, _ in ROWS]

    def group(name: str) -> int:
        return LATER.index(name) + 1 if name in LATER else 0

    return [Cell(UNTUNED_ROW, 0), *sorted(cells, key=lambda c: (group(c.row.name), c.seed, order.index(c.row.name)))]


# -- training up to a milestone ---------------------------------------------------------------------------
def _checkpoint(cell: Cell, step: int) -> Path:
    return cell.run_dir / f"checkpoint-{step}"


def _complete(checkpoint: Path) -> bool:
    from modetune.runs import CHECKPOINT_MARKER

    return (checkpoint / CHECKPOINT_MARKER).is_file()


def _run_complete(cell: Cell) -> bool:
    info = cell.run_dir / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "complete"


def train_to(cell: Cell, step: int, log) -> dict[str, Any]:
    """Train (or resume) the cell's run until checkpoint-`step` is complete: the child stops itself there
    (`--stop-after-step`, the schedule unchanged); at the last milestone the run finishes. Returns this segment's
    wall time and the child's peak RSS."""
    from modetune.training.trainer import latest_complete_checkpoint

    final = step == MAX_STEPS
    if _run_complete(cell) if final else _complete(_checkpoint(cell, step)):
        return {}
    resume = cell.run_dir.exists() and latest_complete_checkpoint(cell.run_dir) is not None
    command = cell.train_command(resume=resume, stop_after=0 if final else step)
    log(f"[{cell.key}] {'resuming' if resume else 'training'} to step {step}")
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(cell.run_dir.parent / f"{cell.run_dir.name}.train.log", "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=grid._child_env())
        _, status, usage = os.wait4(child.pid, 0)  # wait4, not wait(): it keeps the child's resource usage
        child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0 or not (_run_complete(cell) if final else _complete(_checkpoint(cell, step))):
        raise RuntimeError(f"training of {cell.key} failed (exit {code}); see {cell.run_dir}.train.log")
    return {"train_wall_seconds": round(time.time() - started, 1), "train_peak_rss_mb": usage.ru_maxrss // 1024}


# -- evaluating a milestone -----------------------------------------------------------------------------
def _test_file(test: TestSet) -> Path:
    """The generator's held-out (test-split) problems of one level, written once (seed 2000: not the 100-step
    grid's test problems)."""
    from modetune.data import generate_problems, write_examples

    level = int(test.source.split(":")[1])  # type: ignore[union-attr]
    path = WORK / f"synthetic_test_l{level}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        problems = generate_problems(max(t.n_final for t in TEST_SETS), seed=2000, difficulty=level, split="test")
        write_examples(problems, path, include_metadata=False)
    return path


def weights_digest(weights: Path) -> str:
    """sha256 over the weight files (*.safetensors) of a run or checkpoint: what an evaluation scored."""
    digest = hashlib.sha256()
    for path in sorted(weights.glob("*.safetensors")):
        digest.update(path.name.encode())
        sha256_of(path, digest)
    return digest.hexdigest()


def _finished_set(out: Path, model_info: dict[str, Any], n: int) -> dict[str, Any] | None:
    """A test set an interrupted evaluation of the same weights already scored (results.json is written last,
    after the predictions), or None."""
    path = out / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results if results.get("model") == model_info and results["settings"]["limit"] == n else None


def evaluate_piece(cell: Cell, step: int, log) -> dict[str, Any]:
    """Greedy generation on the milestone's test sets (`evaluate_model`, LLM-Adapters extraction). Resumable by
    test set: a set the same weights already scored in an interrupted evaluation is read back, not scored again
    (the final milestone's 1,200 questions took 30 and 87 min of one thread, depending on the machine's load)."""
    import torch

    from modetune.evaluation import evaluate_model
    from modetune.evaluation.runner import GenerationSettings
    from modetune.evaluation.tasks import TaskSpec, get_task
    from modetune.loading import load_model_and_tokenizer
    from modetune.runs import load_run

    torch.set_num_threads(int(grid._child_env()["OMP_NUM_THREADS"]))
    if cell.row.train:
        weights = cell.run_dir if step == MAX_STEPS else _checkpoint(cell, step)
        model_info = {"cell": cell.key, "step": step, "weights_sha256": weights_digest(weights)}
    else:
        model_info = {"cell": cell.key, "step": 0, "model": base_model()}
    model, tokenizer = None, None
    final = cell.scores_final_questions(step)
    scores: dict[str, Any] = {}
    seconds = 0.0
    for test in TEST_SETS:
        n = test.n_final if final else test.n_intermediate
        if not n:
            continue
        out = _partial(cell, step) / "generate" / test.name
        results = _finished_set(out, model_info, n)
        if results is not None:
            log(f"[{cell.key}] step {step}: {test.name} already scored by an interrupted evaluation")
        else:
            if model is None and cell.row.train:
                model, tokenizer, _ = load_run(weights)
            elif model is None:
                model, tokenizer = load_model_and_tokenizer(base_model())
            if test.source is None:
                spec, path = get_task(test.name), grid._shared(get_task(test.name).dirs[0], "test.json")
            else:
                spec, path = TaskSpec(test.name, "arithmetic", "number"), str(_test_file(test))
            log(f"[{cell.key}] step {step}: evaluating {test.name} ({n} questions)")
            results = evaluate_model(
                model, tokenizer, [spec], data=path, limit=n, seed=0, scoring="generate",
                generation=GenerationSettings(max_new_tokens=TRACK.max_new_tokens), batch_size=16, output_dir=out,
                model_info=model_info, progress=False, train_files=[d for d in TRACK.train_data if Path(d).is_file()],
            ).results  # fmt: skip
        seconds += results["elapsed_seconds"]
        result = results["tasks"][test.name]
        scores[test.name] = {k: result[k] for k in ("accuracy", "n", "ci95") if k in result}
    return {"eval_seconds": round(seconds, 1), "scores": {"generate": scores}}


def base_model() -> str:
    """The model every row tunes (`--model` of `COMMON`): the untuned reference."""
    return grid._flag_value(COMMON, "--model") or ""


def _partial(cell: Cell, step: int) -> Path:
    return cell.piece_dir(step).with_name(f"step{step}.partial")


def run_piece(cell: Cell, step: int, log) -> None:
    """Train to the milestone, evaluate it, and move the finished piece into place in one rename. An interrupted
    piece keeps its partial directory: the test sets it scored and this segment's training statistics."""
    partial = _partial(cell, step)
    train_stats = train_to(cell, step, log) if cell.row.train else {}
    stats_file = partial / "train_stats.json"
    if train_stats:
        partial.mkdir(parents=True, exist_ok=True)
        stats_file.write_text(json.dumps(train_stats) + "\n")
    elif stats_file.is_file():  # trained before an interruption of the evaluation
        train_stats = json.loads(stats_file.read_text())
    info: dict[str, Any] = {
        "cell": cell.key,
        "step": step,
        "row": cell.row.label,
        "flags": cell.row.flags,
        "seed": cell.seed,
        "modetune_commit": grid._code_commit(),
        **_train_info(cell, step, train_stats),
    }
    info.update(evaluate_piece(cell, step, log))
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "cell.json").write_text(json.dumps(info, indent=2) + "\n")
    if cell.row.train:  # the training log up to this milestone travels with the results (a few kB)
        metrics = [line for line in (cell.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        kept = [line for line in metrics if json.loads(line).get("step", 0) <= step]
        (partial / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    stats_file.unlink(missing_ok=True)  # recorded in cell.json
    grid.store_results(partial)  # predictions gzipped, no machine paths (run.py)
    if cell.piece_dir(step).exists():
        shutil.rmtree(cell.piece_dir(step))
    os.replace(partial, cell.piece_dir(step))
    if cell.row.train:
        _prune(cell, step)
    log(f"[{cell.key}] step {step} done")


def _train_info(cell: Cell, step: int, train_stats: dict[str, Any]) -> dict[str, Any]:
    """A piece's training command, median step time and trainable parameters (the untuned model: its name)."""
    if not cell.row.train:
        return {"model": base_model(), "command": f"python experiments/long_budget.py --only {cell.key}"}
    run_info = json.loads((cell.run_dir / "run.json").read_text())
    return {
        "command": " ".join(cell.train_command()).replace(sys.executable, "python"),
        "step_seconds": grid._median_step_seconds(cell.run_dir / "metrics.jsonl"),
        **train_stats,
        "trainable_parameters": run_info.get("trainable_parameters"),
    }


def _prune(cell: Cell, evaluated: int) -> None:
    """Keep the newest complete checkpoint (to resume from) and the later milestones' (to evaluate); every
    checkpoint is kept until then (`--save-total-limit 0`), so a milestone is never pruned before its turn."""
    from modetune.training.trainer import latest_complete_checkpoint

    newest = latest_complete_checkpoint(cell.run_dir)
    later = {_checkpoint(cell, m) for m in MILESTONES if m > evaluated}
    for path in cell.run_dir.glob("checkpoint-*"):
        if path != newest and path not in later:
            shutil.rmtree(path, ignore_errors=True)


# -- looking inside the finished runs ---------------------------------------------------------------------
def why_dir(cell: Cell) -> Path:
    return WHY / TRACK.name / cell.row.name / f"s{cell.seed}"


def inspect_cells(cells: list[Cell], log) -> None:
    """`modetune inspect` (with the router probe) on every finished cell that mixes k >= 2 layers and is not
    inspected yet, on the grid's inspection data (the same 40 held-out level-3 problems as its 100-step runs, so
    the two budgets read side by side). Tables and plots land in experiments/why/long/<track>/<row>/s<seed>/."""
    for cell in cells:
        if not cell.row.train or grid._flag_value(cell.row.flags, "--num-layers") == "1" or not cell.done(MAX_STEPS):
            continue
        if (why_dir(cell) / "router_probe.md").is_file():
            continue
        work_out = WORK / "inspect" / TRACK.name / cell.row.name / f"s{cell.seed}"
        log(f"[{cell.key}] inspecting")
        command = [sys.executable, "-m", "modetune", "inspect", "--run", str(cell.run_dir), *TRACK.inspect_data,
                   "--seed", "0", "--router-probe", "--output", str(work_out)]  # fmt: skip
        grid.inspect_into(command, work_out, why_dir(cell))


# -- the plan -------------------------------------------------------------------------------------------
def plan_lines() -> list[str]:
    """Cells x hours from the finished pieces' measured step and evaluation times (or say none is measured)."""
    steps, evals = [], {False: [], True: []}
    for cell in all_cells():
        for step in cell.milestones:
            path = cell.piece_dir(step) / "cell.json"
            if path.is_file():
                info = json.loads(path.read_text())
                if info.get("step_seconds"):
                    steps.append((cell.row.name, info["step_seconds"]))
                evals[cell.scores_final_questions(step)].append(info["eval_seconds"])
    if not steps:
        return ["No piece has finished yet: nothing measured."]
    lines = []
    total = left = 0.0
    mid = sum(evals[False]) / len(evals[False]) if evals[False] else 0.0
    end = sum(evals[True]) / len(evals[True]) if evals[True] else 0.0
    starts = (0, *MILESTONES[:-1])  # each piece trains from the milestone before it
    for row, seeds in ROWS:
        own = [s for name, s in steps if name == row.name]
        per_step = own or [s for _, s in steps]
        step_seconds = sorted(per_step)[len(per_step) // 2]
        piece_hours = {m: ((m - start) * step_seconds + (end if m == MAX_STEPS else mid)) / 3600
                       for start, m in zip(starts, MILESTONES, strict=True)}  # fmt: skip
        hours = sum(piece_hours.values())
        total += hours * len(seeds)
        left += sum(h for seed in seeds for m, h in piece_hours.items() if not Cell(row, seed).done(m))
        guess = "" if own else " (its step not measured yet: the measured rows' step time, a lower bound for MoDE)"
        lines.append(f"- {row.label}: {len(seeds)} seeds x {hours:.1f} h{guess}")
    untuned = Cell(UNTUNED_ROW, 0)
    total += end / 3600
    left += 0.0 if untuned.done(0) else end / 3600
    lines.append(f"- {UNTUNED_ROW.label}: one evaluation of the final milestone's questions, {end / 3600:.1f} h")
    lines.append(
        f"- in all: {total:.0f} h of one thread, {left:.0f} h of it still to run (about {left / 2:.0f} h with "
        "two runners side by side)"
    )
    if not evals[True]:
        lines.append("- not included yet: the final evaluation (1,200 questions), unmeasured until a cell finishes")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="cell key(s) track/row/sSEED (prefix ok)")
    parser.add_argument("--max-pieces", type=int, default=0, help="stop after this many pieces (0: all)")
    parser.add_argument("--report", action="store_true", help="only regenerate RESULTS.md's long-budget section")
    parser.add_argument("--commands", action="store_true", help="print each cell's training command")
    parser.add_argument("--plan", action="store_true", help="print cells x hours from the measured times")
    parser.add_argument("--inspect", action="store_true", help="run `modetune inspect` on the finished MoDE cells")
    args = parser.parse_args(argv)
    cells = grid.select_cells(all_cells(), args.only, parser)
    if args.commands:
        for c in [c for c in cells if c.row.train]:
            print(f"# {c.key}\n{' '.join(c.train_command()).replace(sys.executable, 'python')}")
        return 0
    if args.plan:
        print("\n".join(plan_lines()))
        return 0

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    if args.inspect:
        inspect_cells(cells, log)
        return 0

    todo = [] if args.report else [c for c in cells if not all(c.done(step) for step in c.milestones)]
    if todo:
        grid.require_shared_data()
    run_cells(todo, args.max_pieces, log)
    _write_report(log)
    return 0


def run_cells(cells: list[Cell], max_pieces: int, log) -> int:
    """Each cell's unfinished pieces in order, the cell claimed for the while (`claim_cell`): a second runner
    started beside this one takes the next free cell instead of the same one, so two cores share the grid.
    Returns the number of pieces run (at most `max_pieces`, 0: no limit)."""
    ran = 0
    for cell in cells:
        claim = claim_cell(cell, log)
        if claim is None:
            continue
        try:
            for step in cell.milestones:
                if max_pieces and ran >= max_pieces:
                    return ran
                if not cell.done(step):  # read under the claim: another runner may have finished it
                    run_piece(cell, step, log)
                    ran += 1
                    _write_report(log)
        finally:
            claim.release()
    return ran


def claim_cell(cell: Cell, log) -> RunLock | None:
    """This process's lock on the cell (a flock the kernel drops when the process dies, however it dies),
    or None with a log line when another live runner holds it."""
    folder, name = cell.run_dir.parent, f"{cell.run_dir.name}.runner.lock"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return acquire_run_lock(folder, name=name)
    except RunLockedError:
        owner = read_lock_owner(folder, name=name)
        log(f"[{cell.key}] skipped: another runner has it (pid {owner.get('pid', '?')})")
        return None


def _write_report(log) -> None:
    """Regenerate RESULTS.md's long-budget section and its figures (experiments/long_report.py)."""
    grid.reload_and_report("long_report", all_cells(), log)


if __name__ == "__main__":
    sys.exit(exit_status(main, "experiments/long_budget.py"))
