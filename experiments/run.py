"""Does MoDE help? The controlled experiment of issue 11, as one resumable grid.

    python experiments/run.py                       # run every unfinished cell, in priority order
    python experiments/run.py --only arithmetic/lora/s0 --only arithmetic/lora_mode/s0
    python experiments/run.py --max-cells 2         # stop after two cells (the table grows run by run)
    python experiments/run.py --report              # only regenerate RESULTS.md and the plots
    python experiments/run.py --commands            # print the one command per cell that reproduces it
    python experiments/run.py --inspect             # look inside finished cells' runs (experiments/why/)

A cell is (track, row, seed). Each one trains with `modetune train` (a subprocess, so `--resume` picks up
an interrupted training from its last complete checkpoint) and then evaluates the run on the track's fixed
test subsets with `modetune.evaluation.evaluate_model`. A finished cell writes
`experiments/results/<track>/<row>/s<seed>/` (cell.json, results.json, predictions.jsonl.gz) and is skipped
afterwards; run directories (weights, checkpoints) live outside the repository in the work directory
(`$MODETUNE_EXPERIMENTS_WORK`, default `~/.cache/modetune/experiments`). RESULTS.md and its plots are
regenerated from whatever is finished, after every cell.

Everything that must be equal across rows is fixed here: data, steps, batch, learning-rate schedule, seeds,
test subsets, decoding. Rows differ only in their own flags.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.errors import ConfigError, exit_status

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
WHY = HERE / "why"  # `--inspect`: what `modetune inspect` shows inside finished cells' runs
SHARED = Path(os.environ.get("MODETUNE_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
WORK = Path(os.environ.get("MODETUNE_EXPERIMENTS_WORK", Path.home() / ".cache" / "modetune" / "experiments"))

# -- what is equal across rows ---------------------------------------------------------------------------
# The LLM-Adapters LoRA recipe (r=32, alpha=64, dropout 0.05 on q, k, v, up, down; linear schedule) at a budget
# that fits 2 CPU cores: 100 steps of batch 8 (800 examples), lr 1e-3 with 10 warm-up steps, cutoff 256 tokens.
# The recipe's lr 3e-4 left LoRA at the floor after 100 steps (pilot: 2.5-12.5% on every arithmetic set,
# experiments/pilot/), so the short budget takes the demo's 1e-3.
COMMON = [
    "--model", "smollm2-135m", "--max-steps", "100", "--batch-size", "8", "--learning-rate", "1e-3",
    "--lr-scheduler", "linear", "--warmup-steps", "10", "--cutoff-len", "256", "--save-steps", "20",
    "--save-total-limit", "1", "--logging-steps", "5",
]  # fmt: skip
LORA = ["--peft", "lora", "--lora-r", "32", "--lora-alpha", "64", "--lora-dropout", "0.05",
        "--target-modules", "q_proj,k_proj,v_proj,up_proj,down_proj"]  # fmt: skip
MODE = ["--num-layers", "3"]
BASELINE = ["--num-layers", "1"]  # the ensemble is the final layer alone: plain LoRA


@dataclass(frozen=True)
class Track:
    name: str
    train_data: list[str]
    train_extra: list[str]
    # (task name, limit) for LLM-Adapters files; the synthetic held-out set is added for arithmetic
    tasks: tuple[str, ...]
    limit: int
    scorings: tuple[tuple[str, str], ...]  # (scoring, ll_style)
    synthetic_test: int = 0
    max_new_tokens: int = 200
    inspect_data: tuple[str, ...] = ()  # `modetune inspect` data flags for --inspect


def _shared(*parts: str) -> str:
    return str(SHARED.joinpath(*parts))


def require_shared_data() -> None:
    """Refuse to start cells without the test and training sets: otherwise the first cell would fail inside its
    child process, after minutes of loading, with a traceback instead of the fix."""
    if not SHARED.is_dir():
        raise ConfigError(
            f"the experiments' data is not at {SHARED}: put the shared data beside the repository (../shared/data), "
            "or run `modetune data fetch all` and set MODETUNE_SHARED_DATA to its directory "
            "(default ~/.cache/modetune/data)"
        )


TRACKS = {
    # GSM8K's training set alone leaves SmolLM2-135M near the floor on most sets; the generator's level 2-3
    # problems (train split) lift it, and their test split (disjoint by construction) is one more test set.
    "arithmetic": Track(
        "arithmetic",
        train_data=[_shared("gsm8k_openai", "train.jsonl"), "synthetic:3000:2", "synthetic:3000:3"],
        train_extra=[],
        tasks=("gsm8k", "svamp", "mawps", "addsub", "singleeq", "multiarith"),
        limit=40,
        scorings=(("generate", "text"),),
        synthetic_test=60,
        # held-out level-3 generator problems: the one arithmetic set where LoRA is off the floor
        inspect_data=("--data", "synthetic:40:3", "--limit", "40"),
    ),
    "commonsense": Track(
        "commonsense",
        train_data=[_shared(d, "train.json") for d in ("boolq", "arc_easy", "arc_challenge", "openbookqa")],
        train_extra=["--data-mix", "1", "1", "1", "1"],
        tasks=("boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa"),
        limit=100,
        scorings=(("loglikelihood", "text"), ("loglikelihood", "label"), ("generate", "text")),
        max_new_tokens=32,
        inspect_data=("--task", "arc_challenge", "--limit", "40"),
    ),
}


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    flags: list[str]
    baseline: str | None  # the row it is compared with
    seeds: tuple[int, ...] = (0, 1)
    priority: int = 2
    train: bool = True
    tracks: tuple[str, ...] = ("arithmetic", "commonsense")
    extra: dict[str, Any] = field(default_factory=dict)


ROWS = [
    Row("lora", "1. LoRA (r=32, q,k,v,up,down)", [*LORA, *BASELINE], None, (0, 1, 2), 1),
    Row("lora_mode", "2. LoRA + MoDE (k=3, defaults)", [*LORA, *MODE], "lora", (0, 1, 2), 1),
    Row("mode_only", "3. MoDE only (adapters + router)", ["--peft", "none", *MODE], "lora", (0, 1, 2), 1),
    Row("base", "0. untuned base model", [], None, (0,), 2, train=False),
    # about as many trainable parameters as MoDE only (2,883 on SmolLM2-135M): rank-1 LoRA on the last
    # layer's q and v projections = 1,152 + 768 = 1,920
    Row(
        "lora_small",
        "4. LoRA r=1, last layer q,v (~MoDE-only size)",
        [
            "--peft",
            "lora",
            "--lora-r",
            "1",
            "--lora-alpha",
            "2",
            "--lora-dropout",
            "0.05",
            "--target-modules",
            "model.layers.29.self_attn.q_proj,model.layers.29.self_attn.v_proj",
            *BASELINE,
        ],
        "mode_only",
    ),
    # the paper's MoDE choices (experiments/PAPER.md: bias-free uniform router, lambda = 1) on the same LoRA
    Row("paper", "2p. LoRA + MoDE, the paper's configuration (--preset paper)", [*LORA, "--preset", "paper"], "lora"),
    Row("dora", "5a. DoRA (r=32)", ["--peft", "dora", *LORA[2:], *BASELINE], None),
    Row("dora_mode", "5b. DoRA + MoDE (k=3)", ["--peft", "dora", *LORA[2:], *MODE], "dora"),
    # the variant the "why" analysis suggested (RESULTS.md): the router also reads each late layer's confidence
    Row(
        "var_confidence",
        "7. LoRA + MoDE, the router also reads the late layers' confidence (--router-confidence)",
        [*LORA, *MODE, "--router-confidence"],
        "lora_mode",
        tracks=("arithmetic",),
    ),
    # the next variant: the router hardly trains at this budget (W_g moves < 0.02), so give it MoD's router rate
    Row(
        "var_router_lr",
        "8. LoRA + MoDE, the router at 10x the learning rate (--router-lr-scale 10)",
        [*LORA, *MODE, "--router-lr-scale", "10"],
        "lora_mode",
        tracks=("arithmetic",),
    ),
    # the same on the paper's configuration, where the probe found the most a router could gain from y_L
    Row(
        "var_paper_router_lr",
        "8p. the paper's configuration, the router at 10x the learning rate (--preset paper --router-lr-scale 10)",
        [*LORA, "--preset", "paper", "--router-lr-scale", "10"],
        "paper",
        tracks=("arithmetic",),
    ),
    *[
        Row(f"abl_{name}", f"6. LoRA + MoDE, {desc}", [*LORA, *flags], "lora_mode", (0, 1), 3, tracks=("arithmetic",))
        for name, desc, flags in [
            ("k2", "k=2", ["--num-layers", "2"]),
            ("k4", "k=4", ["--num-layers", "4"]),
            ("k6", "k=6", ["--num-layers", "6"]),
            ("nodistill", "distill off", [*MODE, "--distill", "none"]),
            ("reversekl", "reverse KL", [*MODE, "--distill", "reverse_kl"]),
            ("uniform", "router init uniform", [*MODE, "--router-init", "uniform"]),
            ("adapter_none", "adapter none", [*MODE, "--adapter", "none"]),
            ("adapter_affine", "adapter affine", [*MODE, "--adapter", "affine"]),
            ("lambda0", "λ=0", [*MODE, "--distill-weight", "0"]),
            ("lambda003", "λ=0.03", [*MODE, "--distill-weight", "0.03"]),
            ("lambda03", "λ=0.3", [*MODE, "--distill-weight", "0.3"]),
        ]
    ],
]
ROWS_BY_NAME = {r.name: r for r in ROWS}


@dataclass(frozen=True)
class Cell:
    track: Track
    row: Row
    seed: int

    @property
    def key(self) -> str:
        return f"{self.track.name}/{self.row.name}/s{self.seed}"

    @property
    def result_dir(self) -> Path:
        return RESULTS / self.track.name / self.row.name / f"s{self.seed}"

    @property
    def why_dir(self) -> Path:
        return WHY / self.track.name / self.row.name / f"s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return WORK / self.track.name / self.row.name / f"s{self.seed}"

    def train_command(self, resume: bool = False) -> list[str]:
        return [
            sys.executable, "-m", "modetune", "train", *COMMON, "--data", *self.track.train_data,
            *self.track.train_extra, *self.row.flags, "--seed", str(self.seed), "--output", str(self.run_dir),
            *(["--resume"] if resume else ["--overwrite"]),
        ]  # fmt: skip

    @property
    def done(self) -> bool:
        return (self.result_dir / "cell.json").is_file()


def all_cells() -> list[Cell]:
    cells = [
        Cell(TRACKS[t], row, seed) for row in ROWS for t in row.tracks for seed in row.seeds
    ]  # priority: rows 1-3 seed 0 on both tracks, then their other seeds, then rows 4-5, then ablations
    return sorted(cells, key=lambda c: (c.row.priority, c.seed, list(TRACKS).index(c.track.name)))


# -- running one cell ---------------------------------------------------------------------------------------
def _train(cell: Cell, log) -> dict[str, Any]:
    """Train (or resume) the cell's run; returns wall time and the child's peak RSS."""
    from modetune.training.trainer import latest_complete_checkpoint

    run = cell.run_dir
    if (run / "run.json").is_file() and json.loads((run / "run.json").read_text()).get("status") == "complete":
        return json.loads((run / "cell_train.json").read_text()) if (run / "cell_train.json").is_file() else {}
    resume = latest_complete_checkpoint(run) is not None if run.exists() else False
    command = cell.train_command(resume=resume)
    log(f"[{cell.key}] {'resuming' if resume else 'training'}: {' '.join(command)}")
    run.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(run.parent / f"{run.name}.train.log", "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"training of {cell.key} failed (exit {status}); see {run.parent / run.name}.train.log")
    stats = {
        "train_wall_seconds": round(time.time() - started, 1),  # of this segment only, when resumed
        "train_peak_rss_mb": usage.ru_maxrss // 1024,
        "train_resumed": resume,
    }
    (run / "cell_train.json").write_text(json.dumps(stats))
    return stats


def _child_env() -> dict[str, str]:
    threads = os.environ.get("MODETUNE_EXPERIMENT_THREADS", "1")
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}


def _synthetic_test_file(track: Track) -> Path:
    """The generator's held-out (test-split) level-2 and level-3 problems, written once."""
    from modetune.data import generate_problems, write_examples

    path = WORK / f"{track.name}_synthetic_test.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        half = track.synthetic_test // 2
        problems = generate_problems(half, seed=1000, difficulty=2, split="test")
        problems += generate_problems(track.synthetic_test - half, seed=1000, difficulty=3, split="test")
        write_examples(problems, path, include_metadata=False)
    return path


def _evaluate(cell: Cell, log) -> dict[str, Any]:
    import torch

    from modetune.evaluation import evaluate_model
    from modetune.evaluation.runner import GenerationSettings
    from modetune.evaluation.tasks import TaskSpec, get_task

    torch.set_num_threads(int(_child_env()["OMP_NUM_THREADS"]))
    if cell.row.train:
        from modetune.runs import load_run

        model, tokenizer, _ = load_run(cell.run_dir)
    else:
        from modetune.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    track = cell.track
    # (task spec, its file): the LLM-Adapters test files, plus the generator's held-out set for arithmetic
    tasks: list[tuple[Any, str]] = [(get_task(t), _shared(get_task(t).dirs[0], "test.json")) for t in track.tasks]
    if track.synthetic_test:
        tasks.append((TaskSpec("synthetic_l23", "arithmetic", "number"), str(_synthetic_test_file(track))))
    scores: dict[str, dict[str, Any]] = {}
    started = time.time()
    for scoring, style in track.scorings:
        name = scoring if scoring == "generate" else f"ll_{style}"
        for spec, path in tasks:
            if scoring == "loglikelihood" and not spec.multiple_choice:
                continue
            log(f"[{cell.key}] evaluating {spec.name} ({name})")
            report = evaluate_model(
                model, tokenizer, [spec], data=path, limit=track.limit, seed=0, scoring=scoring, ll_style=style,
                generation=GenerationSettings(max_new_tokens=track.max_new_tokens), batch_size=16,
                output_dir=_partial(cell) / name / spec.name, model_info={"cell": cell.key}, progress=False,
                train_files=[d for d in track.train_data if Path(d).is_file()],
            )  # fmt: skip
            result = report.results["tasks"][spec.name]
            scores.setdefault(name, {})[spec.name] = {k: result[k] for k in ("accuracy", "n", "ci95") if k in result}
    return {"eval_seconds": round(time.time() - started, 1), "scores": scores}


def _partial(cell: Cell) -> Path:
    return cell.result_dir.with_name(cell.result_dir.name + ".partial")


def run_cell(cell: Cell, log) -> None:
    partial = _partial(cell)
    if partial.exists():
        shutil.rmtree(partial)
    train_stats = _train(cell, log) if cell.row.train else {}
    info: dict[str, Any] = {
        "cell": cell.key,
        "row": cell.row.label,
        "flags": cell.row.flags,
        "seed": cell.seed,
        "modetune_commit": _code_commit(),
    }
    if cell.row.train:
        run_info = json.loads((cell.run_dir / "run.json").read_text())
        info.update(
            command=" ".join(cell.train_command()).replace(sys.executable, "python"),
            trainable_parameters=run_info.get("trainable_parameters"),
            global_step=run_info.get("global_step"),
            train_loss=run_info.get("train_loss"),
            step_seconds=_median_step_seconds(cell.run_dir / "metrics.jsonl"),
            **train_stats,
        )
    info.update(_evaluate(cell, log))
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (partial / "cell.json").write_text(json.dumps(info, indent=2) + "\n")
    store_results(partial)
    if cell.result_dir.exists():
        shutil.rmtree(cell.result_dir)
    os.replace(partial, cell.result_dir)  # a cell is finished only once its whole directory is in place
    log(f"[{cell.key}] done")


def store_results(directory: Path) -> None:
    """Make a finished cell's (or long_budget.py piece's) directory what experiments/results keeps: its
    predictions gzipped (predictions.jsonl.gz, the same lines, deterministic bytes) and its JSON files naming
    no path of this machine (`portable_paths`)."""
    from modetune.evaluation.predictions_io import compress_tree

    compress_tree(directory)
    for path in sorted(directory.rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        if (portable := portable_paths(text)) != text:
            path.write_text(portable, encoding="utf-8")


def portable_paths(text: str) -> str:
    """``text`` with this machine's absolute paths written as the repository's conventions do: inside the
    repository relative to it, beside it relative to it (``../shared/data``, run.py's default data location),
    under the home directory with ``~`` (``~/.cache/modetune/experiments``, the default work directory)."""
    for prefix, short in ((REPO, ""), (REPO.parent, "../"), (Path.home(), "~/")):
        if prefix.parent != prefix:  # never the root directory itself
            text = re.sub(rf"(?<![\w.~/-]){re.escape(str(prefix))}/", short, text)
    return text


def _code_commit() -> str | None:
    """The commit of the modetune code that ran (its checkout may differ from this script's)."""
    import modetune

    source = Path(modetune.__file__).resolve().parent
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _median_step_seconds(metrics: Path) -> float | None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    times = [(r["step"], r["time"]) for r in rows if "time" in r and "step" in r]
    gaps = sorted((t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in itertools.pairwise(times) if s2 > s1)
    return round(gaps[len(gaps) // 2], 2) if gaps else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="cell key(s) track/row/sSEED (prefix ok)")
    parser.add_argument("--max-cells", type=int, default=0, help="stop after this many cells (0: all)")
    parser.add_argument("--report", action="store_true", help="only regenerate RESULTS.md and the plots")
    parser.add_argument("--commands", action="store_true", help="print each cell's training command")
    parser.add_argument(
        "--inspect", action="store_true", help="run `modetune inspect` on the finished cells' runs (experiments/why/)"
    )
    args = parser.parse_args(argv)
    cells = select_cells(all_cells(), args.only, parser)
    if args.commands:
        for c in cells:
            print(f"# {c.key}\n{' '.join(c.train_command()).replace(sys.executable, 'python')}")
        return 0

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    if args.inspect:
        return inspect_cells(cells, log)
    todo = [] if args.report else [c for c in cells if not c.done][: args.max_cells or None]
    if todo:
        require_shared_data()
    for cell in todo:
        run_cell(cell, log)
        _write_report(log)
    _write_report(log)
    return 0


WHY_FILES = (
    "lens.md",
    "lens.csv",
    "lens.png",
    "routing.png",
    "routing_by_class.png",
    "training_curves.png",
    "router_probe.md",
    "router_probe.json",
)


def inspect_command(cell: Cell, out_dir: Path) -> list[str]:
    """`modetune inspect` on a finished cell's run, on the track's fixed inspection data (with the router
    probe when the run routes between k >= 2 layers)."""
    probe = ["--router-probe"] if _routes(cell) else []
    return [sys.executable, "-m", "modetune", "inspect", "--run", str(cell.run_dir), *cell.track.inspect_data,
            "--seed", "0", *probe, "--output", str(out_dir)]  # fmt: skip


def _flag_value(flags: list[str], name: str) -> str | None:
    """The value after the last `name` in `flags` (None when absent)."""
    values = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == name]
    return values[-1] if values else None


def _routes(cell: Cell) -> bool:
    """Its run mixes k >= 2 late layers (a baseline's `--num-layers 1` is the final layer alone)."""
    return _flag_value(cell.row.flags, "--num-layers") != "1"


def _inspected(cell: Cell) -> bool:
    """Its lens table is there, and when it routes, its router probe and the router gate line too (cells
    inspected before those existed are inspected again)."""
    lens = cell.why_dir / "lens.md"
    if not lens.is_file():
        return False
    if not _routes(cell):
        return True
    return (cell.why_dir / "router_probe.md").is_file() and "- router gate (" in lens.read_text()


def inspect_cells(cells: list[Cell], log) -> int:
    """Inspect every finished, trained cell not inspected yet. The small files (tables and plots) land in
    experiments/why/<track>/<row>/s<seed>/; lens.json and routing.html (megabytes) stay in the work directory."""
    for cell in [c for c in cells if c.row.train and c.done and not _inspected(c)]:
        if not (cell.run_dir / "run.json").is_file():
            print(f"{cell.key}: its run directory {cell.run_dir} is gone; retrain it to inspect it", file=sys.stderr)
            continue
        work_out = WORK / "inspect" / cell.track.name / cell.row.name / f"s{cell.seed}"
        log(f"[{cell.key}] inspecting")
        inspect_into(inspect_command(cell, work_out), work_out, cell.why_dir)
    return 0


def inspect_into(command: list[str], work_out: Path, why_dir: Path) -> None:
    """Run a `modetune inspect` command writing into `work_out`, then keep its small files in `why_dir`."""
    subprocess.run(command, check=True, env=_child_env())
    why_dir.mkdir(parents=True, exist_ok=True)
    for name in WHY_FILES:
        if (work_out / name).is_file():
            shutil.copy2(work_out / name, why_dir / name)


def select_cells(cells: list, prefixes: list[str], parser: argparse.ArgumentParser) -> list:
    """The cells whose key starts with one of `prefixes` (all of them when none is given). A prefix that
    matches no cell is a typo, not an empty grid: it ends with the valid keys instead of silently doing nothing."""
    unmatched = [p for p in prefixes if not any(c.key.startswith(p) for c in cells)]
    if unmatched:
        parser.error(f"--only {unmatched[0]!r} matches no cell; the cells are: {', '.join(c.key for c in cells)}")
    return [c for c in cells if not prefixes or any(c.key.startswith(p) for p in prefixes)]


def _write_report(log) -> None:
    """Regenerate RESULTS.md and the plots (experiments/report.py)."""
    reload_and_report("report", all_cells(), log)


def reload_and_report(module: str, cells, log) -> None:
    """`module.write_report(cells)`, the module reloaded so that edits apply mid-grid; a report bug is logged,
    never raised: it must not stop the grid (the cells are safe on disk)."""
    import importlib

    try:
        importlib.reload(importlib.import_module(module)).write_report(cells)
    except Exception as exc:
        log(f"report failed: {exc!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(exit_status(main, "experiments/run.py"))
