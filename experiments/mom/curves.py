"""Learning curves for issue 32: MoM against fair controls, held-out loss against tokens and forward FLOPs.

    OMP_NUM_THREADS=1 python experiments/mom/curves.py --plan           # cells x measured s/step x steps = hours
    OMP_NUM_THREADS=1 python experiments/mom/curves.py --phase sweep    # 6 archs x 3 learning rates (more at an edge), seed 0
    OMP_NUM_THREADS=1 python experiments/mom/curves.py --phase seeds    # each arch's best rate, the other seeds
    python experiments/mom/curves.py --report      # curves PNG + tables -> RESULTS.md (between the curve markers)
    python experiments/mom/curves.py --list        # every cell of both phases and its state
    ... --cells NAME [NAME ...]                    # some cells only; --jobs N: N cells at once (one thread each)
    ... --corpus general                           # another `modetune pretrain --corpus` (default: shared)
    ... --archs mom-2phase                         # some architectures only (e.g. with --phase sweep / seeds)
    ... --phase1-fraction 0.5                      # the two-phase cells' share of tokens in phase 1 (vanilla)

The architectures (`ARCHS`), all at the "small" size of `run.py` (d=192, 4 heads, FFN 512, SmolLM2 tokenizer,
tied embedding):

* vanilla: 4 layers, matched to MoM on parameters (issue 15's control);
* vanilla-flops: the layer count whose forward FLOPs per token are closest to MoM's *realised* FLOPs
  (`modetune.mom.flops.matched_vanilla_layers`, with the non-SKIP picks per round measured in issue 15's runs,
  `MOM_REALISED_PICKS`; the report shows each cell's own realised FLOPs, and compares at equal FLOPs on the curves);
* vanilla-gated: 4 layers with per-token gated residual updates starting at MoM's mean router weight
  (`--arch vanilla-gated --gate-init 0.34`): the control for MoM's shrunk updates;
* mom: issue 15's MoM (4 + 4 modules, 1 SKIP, H = 4, K = 2, GRU state 64, softmax weights);
* mom-authors: the same pool with the authors' settings (`--preset authors`);
* mom-2phase: the paper's two-phase recipe, vanilla -> MoM: the vanilla model above for the first half of the
  tokens (`--phase1-fraction`), then issue 15's MoM built from its layers (`modetune pretrain --init-from`) for
  the rest. Its comparison is vanilla trained on the same total tokens: the `vanilla` cells (same budget, seeds).

A two-phase cell is two `modetune pretrain` runs in its run directory, `phase1/` (vanilla, `Grid.phase1_steps`
steps) and `phase2/` (`--arch mom --init-from <phase1>`, the remaining steps), each with its own cosine schedule,
warm-up and fresh AdamW state, as the authors' phase-2 runs start (`pretrain.sh`: every run its own cosine with
warm-up, `--init_from_vanilla` loading a finished vanilla checkpoint's weights only). Both phases train at the
cell's learning rate: the authors' script uses one `LR=1e-3` for the vanilla runs and the MoM runs initialised
from them alike, so the sweep picks one rate for the whole recipe. Phase 2 draws its routers' initialisation from
seed + `PHASE2_SEED_OFFSET` and reads the data where phase 1 stopped, in the cell's own
order (`modetune pretrain --data-seed <seed> --data-offset <phase-1 blocks>`), as vanilla's second half does: no
block is seen twice (a fresh order of its own would repeat about a third of phase 1's blocks). Phase-1 fraction 0.5 by
default: the authors' code fixes no split (`mom/utils.py:386` names a vanilla checkpoint at step 20,000; their
phase-2 runs take 5,000-30,000 steps, so phase 1 is 40-80% of their total; their `*_fw_20k` runs are 20,000 +
20,000 = 0.5), and half gives each phase 8 of the 16 held-out points and MoM as many tokens to learn its routing
as the vanilla phase had. The curve is one curve over the whole budget: phase 1's points, then phase 2's with
steps, tokens and cumulative FLOPs continuing from phase 1's totals (phase 2's FLOPs from MoM's realised picks),
each point marked with its `phase`; held-out loss on the same blocks (same corpus, split and `--eval-blocks`).
Each phase resumes like any cell (a finished phase 1 is never trained again; an unfinished one is resumed first).

Each other cell is one `modetune pretrain` run (`RUNS`, not in git; resumed from its last checkpoint if
interrupted) that evaluates the held-out loss every `--every` tokens on the same `--eval-blocks` held-out blocks;
its curve (step, tokens, cumulative forward FLOPs, held-out loss) goes to `RESULTS/<corpus>/<cell>.json` when the
run is complete, and a cell with that file is never run again. Cumulative forward FLOPs add each logged step's tokens
times the FLOPs per token of that step: constant for the vanilla models, for MoM computed from the step's router
loads (modules picked per round that are not SKIP). The learning rate schedule is cosine over each run's whole
budget, so the curves are those of runs of that length, not of one longer run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig
from transformers import set_seed as hf_set_seed

from modetune.errors import exit_status
from modetune.files import atomic_save_figure, replace_marked_block
from modetune.mom import MoMConfig, mom_forward_flops
from modetune.mom.flops import matched_vanilla_layers
from modetune.training import TrainingDivergedError
from modetune.training.pretrain import PretrainConfig, build_model, load_tokenizer, mom_config, pretrain
from modetune.training.run_dir import segment_start_step

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results" / "curves"  # one folder per corpus, one JSON per cell (kept in git)
RUNS = HERE / "runs" / "curves"  # the runs with their weights (not in git)
REPORT = HERE / "RESULTS.md"
BEGIN, END = "<!-- curves:begin -->", "<!-- curves:end -->"

SIZE = dict(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512)  # run.py's "small"
MOM_OURS = dict(num_skip_modules=1, k_per_round=2, router="gru", router_hidden_size=64)  # run.py's MOM
# Non-SKIP modules per round that issue 15's MoM runs picked on held-out text (K = 2 x (1 - SKIP share);
# experiments/mom/results/small-mom-s0.json and -s1.json, "routing"."load": SKIP 0.4709 / 0.4644 of attention
# picks, 0.4672 / 0.4736 of FFN picks): what the FLOP-matched vanilla model is sized for.
MOM_REALISED_PICKS = (2 * (1 - (0.4709 + 0.4644) / 2), 2 * (1 - (0.4672 + 0.4736) / 2))
GATE_INIT = 0.34  # MoM's summed router weight per round at initialisation (docs/mom.md), the gates' start
PHASE1_FRACTION = 0.5  # two-phase cells: share of the tokens in phase 1 (vanilla); see the docstring
PHASE2_SEED_OFFSET = 1000  # two-phase cells: phase 2's seed (its routers) = the cell's + this


@dataclass(frozen=True)
class Grid:
    """What every cell shares: corpus, token budget, checkpoints, batch, evaluation, size, rates, seeds."""

    corpus: tuple[str, ...] = ("shared",)
    tokens: int = 2_097_152  # per run: 2,048 steps of 8 x 128 tokens (issue 32 asks >= 2M)
    every: int = 131_072  # held-out loss every this many tokens (16 points per run)
    batch_size: int = 8
    block_size: int = 128
    eval_blocks: int = 96  # the first 96 held-out blocks, as issue 15 (12,192 predicted tokens)
    learning_rates: tuple[float, ...] = (1e-3, 2e-3, 4e-3)  # around issue 15's 2e-3 (the authors': 1e-3)
    # a best rate at the edge of the sweep is not a best: halve (double) it up to this many times (`arch_rates`)
    max_extensions: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)  # the sweep uses the first
    archs: tuple[str, ...] = ("vanilla", "vanilla-flops", "vanilla-gated", "mom", "mom-authors", "mom-2phase")
    size: dict[str, int] = field(default_factory=lambda: dict(SIZE))
    tokenizer: str = "smollm2-135m"
    warmup_fraction: float = 0.05  # of each run (of each phase in a two-phase cell)
    phase1_fraction: float = PHASE1_FRACTION  # two-phase cells: share of the budget in phase 1

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    @property
    def eval_steps(self) -> int:
        return max(1, round(self.every / self.tokens_per_step))

    @property
    def steps(self) -> int:
        """Whole evaluation intervals: the last checkpoint is the end of the run."""
        return max(1, round(self.tokens / self.tokens_per_step / self.eval_steps)) * self.eval_steps

    @property
    def phase1_steps(self) -> int:
        """A two-phase cell's phase-1 steps: the whole evaluation intervals nearest `phase1_fraction` of the run,
        at least one interval in each phase (the boundary is a checkpoint, and its held-out point phase 1's last)."""
        intervals = self.steps // self.eval_steps
        if intervals < 2 or not 0 < self.phase1_fraction < 1:
            raise ValueError(
                f"a two-phase cell needs 0 < phase-1 fraction < 1 (got {self.phase1_fraction:g}) and at least two "
                f"evaluation intervals (got {intervals})"
            )
        return min(intervals - 1, max(1, math.floor(self.phase1_fraction * intervals + 0.5))) * self.eval_steps

    @property
    def tag(self) -> str:
        """The corpus as a folder name (cells of different corpora never mix)."""
        return "+".join(Path(c).stem if ("/" in c or c.endswith((".txt", ".jsonl"))) else c.replace(":", "-")
                        for c in self.corpus)  # fmt: skip


@dataclass(frozen=True)
class CurveArch:
    """One architecture of the grid: its `modetune pretrain` options beyond the grid's (size, optimisation)."""

    key: str
    label: str
    options: Callable[[Grid], dict[str, Any]]
    # two-phase cells: the architecture (key) trained first, whose run's layers `options`' MoM is built from
    phase1: str = ""


def flop_matched_layers(grid: Grid) -> int:
    """Vanilla layers whose forward FLOPs per token are closest to issue 15's MoM's realised FLOPs at this size."""
    cfg = PretrainConfig(output="-", block_size=grid.block_size, **grid.size, **MOM_OURS)
    base = LlamaConfig(vocab_size=1, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads or cfg.num_heads, bos_token_id=None,
                       eos_token_id=None)  # fmt: skip
    mom: MoMConfig = mom_config(cfg, base, cfg.num_layers, "fresh")  # the head is the same for both: vocab 1
    return matched_vanilla_layers(mom, *MOM_REALISED_PICKS, context=grid.block_size // 2)


def _flop_matched(grid: Grid) -> dict[str, Any]:
    return {"arch": "vanilla", "num_layers": flop_matched_layers(grid)}


ARCHS: dict[str, CurveArch] = {
    a.key: a
    for a in (
        CurveArch("vanilla", "vanilla, equal parameters", lambda g: {"arch": "vanilla"}),
        CurveArch("vanilla-flops", "vanilla, equal FLOPs", _flop_matched),
        CurveArch(
            "vanilla-gated", "vanilla, gated residual", lambda g: {"arch": "vanilla-gated", "gate_init": GATE_INIT}
        ),
        CurveArch("mom", "MoM (ours)", lambda g: {"arch": "mom", **MOM_OURS}),
        CurveArch("mom-authors", "MoM (authors' settings)", lambda g: {"arch": "mom", "preset": "authors"}),
        CurveArch("mom-2phase", "vanilla -> MoM (two-phase)", lambda g: {"arch": "mom", **MOM_OURS}, phase1="vanilla"),
        # not in the default grid: one learnt residual scale per branch, the same for every token, started at the
        # gated control's value; against vanilla-gated it separates shrunk updates from per-token gating
        CurveArch(
            "vanilla-scaled",
            "vanilla, learnt residual scale",
            lambda g: {"arch": "vanilla-gated", "gate_init": GATE_INIT, "gate_mode": "scalar"},
        ),
        # not in the default grid: the authors' settings with their router state scaled to this width (256 of
        # d = 768 there; 64 of d = 192 here), whose routers cost ~0.8 M rather than ~5.5 M FLOPs per token
        CurveArch(
            "mom-authors-d3",
            "MoM (authors' settings, router state d/3)",
            lambda g: {"arch": "mom", "preset": "authors", "router_hidden_size": g.size["hidden_size"] // 3},
        ),
    )
}


@dataclass(frozen=True)
class Cell:
    arch: str
    learning_rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arch}-lr{self.learning_rate:g}-s{self.seed}"


# -- the cells ---------------------------------------------------------------------------------------------
def results_dir(grid: Grid) -> Path:
    return RESULTS / grid.tag


def run_dir(grid: Grid, cell: Cell) -> Path:
    return RUNS / grid.tag / cell.name


def finished(grid: Grid, cell: Cell) -> dict[str, Any] | None:
    """The cell's result once it is over: complete, or diverged (its loss not finite; never run again)."""
    path = results_dir(grid) / f"{cell.name}.json"
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("status") in ("complete", "diverged"):
            return result
    return None


def final_loss(result: dict[str, Any]) -> float:
    """A finished cell's final held-out loss; infinite for a diverged one (it loses every comparison of rates)."""
    return result["final_eval_loss"] if result.get("status") == "complete" else math.inf


def arch_rates(grid: Grid) -> dict[str, tuple[float, ...]]:
    """Each architecture's sweep, ascending: the grid's rates, extended by halving (doubling) the lowest (highest)
    while the best finished one is at that edge and its loss is finite, at most `max_extensions` times a side. A
    one-rate grid is a fixed rate, never extended. Known only as the cells finish: the sweep grows as it runs."""
    swept = {}
    for arch in grid.archs:
        rates = sorted(grid.learning_rates)
        while len(rates) > 1:
            done = [finished(grid, Cell(arch, lr, grid.seeds[0])) for lr in rates]
            if None in done:
                break
            losses = [final_loss(r) for r in done]
            best = losses.index(min(losses))
            if best == 0 and rates[0] > min(grid.learning_rates) / 2**grid.max_extensions and losses[0] < math.inf:
                rates.insert(0, rates[0] / 2)
            elif best == len(rates) - 1 and rates[-1] < max(grid.learning_rates) * 2**grid.max_extensions:
                rates.append(rates[-1] * 2)
            else:
                break
        swept[arch] = tuple(rates)
    return swept


def candidate_rates(grid: Grid) -> tuple[float, ...]:
    """Every rate a sweep may reach (`arch_rates`), ascending: the names `--cells` accepts."""
    low, high = min(grid.learning_rates), max(grid.learning_rates)
    ends = [low / 2**k for k in range(1, grid.max_extensions + 1)] + [
        high * 2**k for k in range(1, grid.max_extensions + 1)
    ]
    return tuple(sorted({*grid.learning_rates, *(ends if len(grid.learning_rates) > 1 else [])}))


def sweep_cells(grid: Grid) -> list[Cell]:
    """Phase 1: every architecture at every rate of its sweep (`arch_rates`), first seed."""
    return [Cell(a, lr, grid.seeds[0]) for a, rates in arch_rates(grid).items() for lr in rates]


def best_rates(grid: Grid) -> dict[str, float | None]:
    """Each architecture's learning rate of lowest final held-out loss in its sweep (None until the sweep is done,
    extensions included, or when every rate diverged)."""
    best: dict[str, float | None] = {}
    for arch, rates in arch_rates(grid).items():
        done = [finished(grid, Cell(arch, lr, grid.seeds[0])) for lr in rates]
        losses = [final_loss(r) for r in done if r]
        best[arch] = (
            rates[losses.index(min(losses))] if len(losses) == len(done) and min(losses) < math.inf else None
        )  # fmt: skip
    return best


def sweeps_to_finish(grid: Grid) -> dict[str, tuple[float, ...]]:
    """Per architecture without a best rate yet, the rates of its sweep not yet finished at the first seed."""
    best = best_rates(grid)
    return {
        arch: tuple(lr for lr in rates if finished(grid, Cell(arch, lr, grid.seeds[0])) is None)
        for arch, rates in arch_rates(grid).items()
        if best[arch] is None
    }


def seed_cells(grid: Grid, rates: dict[str, float | None] | None = None) -> list[Cell]:
    """Phase 2: the other seeds at each architecture's best rate (architectures whose sweep is done)."""
    rates = best_rates(grid) if rates is None else rates
    return [Cell(a, lr, s) for a, lr in rates.items() if lr is not None for s in grid.seeds[1:]]


def run_config(grid: Grid, output: Path, options: dict[str, Any], learning_rate: float, seed: int,
               steps: int) -> PretrainConfig:  # fmt: skip
    """One `modetune pretrain` run of `steps` steps with the grid's data, size, batch, evaluation and schedule."""
    options = {**grid.size, **options}
    return PretrainConfig(
        output=str(output), corpus=list(grid.corpus), tokenizer=grid.tokenizer, seed=seed,
        learning_rate=learning_rate, max_steps=steps, batch_size=grid.batch_size, block_size=grid.block_size,
        warmup_steps=max(1, round(grid.warmup_fraction * steps)), eval_steps=grid.eval_steps,
        save_steps=grid.eval_steps, save_total_limit=1, logging_steps=1, eval_max_blocks=grid.eval_blocks,
        **options,
    )  # fmt: skip


def pretrain_config(grid: Grid, cell: Cell) -> PretrainConfig:
    """A one-phase cell's run (a two-phase cell's runs: `phase_configs`)."""
    if ARCHS[cell.arch].phase1:
        raise ValueError(f"{cell.arch} is a two-phase architecture: its runs are phase_configs(grid, cell)")
    return run_config(grid, run_dir(grid, cell), ARCHS[cell.arch].options(grid), cell.learning_rate, cell.seed,
                      grid.steps)  # fmt: skip


def phase_configs(grid: Grid, cell: Cell) -> list[PretrainConfig]:
    """The cell's runs in order: its one run, or a two-phase cell's phase 1 (the `phase1` architecture for
    `grid.phase1_steps`) and phase 2 (its MoM from phase 1's layers for the rest: routers from seed +
    PHASE2_SEED_OFFSET, the data where phase 1 stopped in the cell's own order, as vanilla's second half reads it)."""
    arch = ARCHS[cell.arch]
    if not arch.phase1:
        return [pretrain_config(grid, cell)]
    first, root = grid.phase1_steps, run_dir(grid, cell)
    phase1 = run_config(grid, root / "phase1", ARCHS[arch.phase1].options(grid), cell.learning_rate, cell.seed, first)
    continued = {"init_from": phase1.output, "data_seed": cell.seed, "data_offset": first * grid.batch_size}
    phase2 = run_config(grid, root / "phase2", {**arch.options(grid), **continued}, cell.learning_rate,
                        cell.seed + PHASE2_SEED_OFFSET, grid.steps - first)  # fmt: skip
    return [phase1, phase2]


def _records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def flops_per_token_at(model_config: dict[str, Any], record: dict[str, Any], context: int, nominal: float) -> float:
    """Forward FLOPs per token in a logged training window: MoM's from that window's router loads (non-SKIP picks
    per round = K x (1 - SKIP share)); any other model's is `nominal`."""
    if model_config.get("model_type") != MoMConfig.model_type:
        return nominal
    cfg = MoMConfig.from_dict(model_config)
    picks = []
    for kind, modules in (("atte", cfg.num_attention_modules), ("ffn", cfg.num_ffn_modules)):
        options = modules + cfg.num_skip_modules
        shares = [record.get(f"router/{kind}{j}") for j in range(options)]
        if any(s is None for s in shares):
            return nominal
        picks.append(cfg.k_per_round * (1 - sum(shares[modules:])))
    return mom_forward_flops(cfg, context, *picks)


def curve_of(run: Path) -> dict[str, Any]:
    """The run's held-out losses at its evaluation steps, with the tokens and cumulative forward FLOPs there and
    the mean training loss (and a MoM's router entropy) over the steps since the previous point: a curve that
    turns up says whether the model stopped fitting its training data too, or only the held-out blocks."""
    info = json.loads((run / "run.json").read_text())
    context = info["pretrain_config"]["block_size"] // 2
    nominal = float(info["forward_flops_per_token"])
    tokens, flops = 0, 0.0
    at_step: dict[int, tuple[int, float]] = {0: (0, 0.0)}
    evals: dict[int, float] = {}
    since: dict[str, list[float]] = {"train_loss": [], "router_entropy": []}  # logged steps since the last point
    means: dict[int, dict[str, float]] = {}
    for record in sorted(_records(run), key=lambda r: (r.get("step", 0), "eval_loss" in r)):
        step = int(record.get("step", 0))
        if "eval_loss" in record:
            evals[step] = float(record["eval_loss"])
            if step not in means:  # the final evaluation repeats the last step's: its window is already closed
                means[step] = {key: sum(values) / len(values) for key, values in since.items() if values}
                since = {key: [] for key in since}
        elif "loss" in record and "tokens_seen" in record:
            window = int(record["tokens_seen"]) - tokens
            flops += window * flops_per_token_at(info["model_config"], record, context, nominal)
            tokens = int(record["tokens_seen"])
            at_step[step] = (tokens, flops)
            since["train_loss"].append(float(record["loss"]))
            if "router_entropy" in record:
                since["router_entropy"].append(float(record["router_entropy"]))
    points = [{"step": s, "tokens": at_step[s][0], "forward_flops": at_step[s][1], "eval_loss": loss, **means[s]}
              for s, loss in sorted(evals.items()) if s in at_step]  # fmt: skip
    return {"points": points, "tokens": tokens, "forward_flops": flops,
            "realised_flops_per_token": flops / tokens if tokens else nominal}  # fmt: skip


def two_phase_curve(runs: list[Path]) -> dict[str, Any]:
    """One curve over consecutive runs (a two-phase cell's phases): each run's points with the steps, tokens and
    cumulative forward FLOPs of the runs before it added, and `phase` (1, 2, ...) on every point."""
    points: list[dict[str, Any]] = []
    steps, tokens, flops = 0, 0, 0.0
    for phase, run in enumerate(runs, 1):
        curve = curve_of(run)
        points += [{**p, "step": p["step"] + steps, "tokens": p["tokens"] + tokens,
                    "forward_flops": p["forward_flops"] + flops, "phase": phase} for p in curve["points"]]  # fmt: skip
        steps += int(json.loads((run / "run.json").read_text())["global_step"])
        tokens += curve["tokens"]
        flops += curve["forward_flops"]
    return {"points": points, "tokens": tokens, "forward_flops": flops,
            "realised_flops_per_token": flops / tokens if tokens else math.nan}  # fmt: skip


def _read_info(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}


def _train(cfg: PretrainConfig, argv: list[str]) -> dict[str, Any]:
    """Train (or resume) one run unless it is complete; its run.json."""
    run = Path(cfg.output)
    info = _read_info(run)
    if info.get("status") != "complete":
        cfg.resume = bool(info)
        cfg.overwrite = not cfg.resume
        pretrain(cfg, argv=argv)
        info = _read_info(run)
    return info


def _train_phases(configs: list[PretrainConfig], argv: list[str]) -> list[dict[str, Any]]:
    """A two-phase cell's runs in order. A complete phase is never trained again; a later phase that exists
    while an earlier one is not complete (or was made for another split) was not built from it: refused."""
    infos = []
    for i, cfg in enumerate(configs):
        info = _read_info(Path(cfg.output))
        ran, planned = info.get("pretrain_config", {}).get("max_steps"), cfg.max_steps
        if info.get("status") == "complete" and ran != planned:
            raise ValueError(f"{cfg.output} ran {ran} steps, this grid plans {planned} (another --tokens or "
                             "--phase1-fraction): delete the cell's run directory to run it anew")  # fmt: skip
        if info.get("status") != "complete":
            later = [c.output for c in configs[i + 1 :] if Path(c.output).exists()]
            if later:
                raise ValueError(f"{', '.join(later)} exist(s) but {cfg.output} is not complete: the later phase was "
                                 "not built from it; delete the cell's run directory to run it anew")  # fmt: skip
        infos.append(_train(cfg, argv))
    return infos


def seconds_per_step(infos: list[dict[str, Any]]) -> float:
    """Wall seconds per optimiser step, periodic evaluations included, over the steps the runs' timed segments
    trained: a resumed run's `seconds` time only its last segment, not the steps before its checkpoint."""
    steps = sum(i["global_step"] - segment_start_step(i) for i in infos)
    return sum(i["seconds"] for i in infos) / max(1, steps)


def run_cell(grid: Grid, cell: Cell, argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or resume) one cell's run(s) and write its curve; a cell whose JSON is complete is returned as it is."""
    done = finished(grid, cell)
    if done is not None:
        return done
    torch.set_num_threads(1)  # one thread per cell: cells run side by side with --jobs
    argv = argv or ["experiments/mom/curves.py", "--cells", cell.name]
    configs = phase_configs(grid, cell)
    two_phase = len(configs) > 1
    try:
        infos = _train_phases(configs, argv) if two_phase else [_train(configs[0], argv)]
    except TrainingDivergedError as error:  # a rate too high for this architecture: a result of the sweep
        return _write_result(grid, cell, {"cell": cell.name, **asdict(cell), "status": "diverged",
                                          "label": ARCHS[cell.arch].label, "final_eval_loss": None,
                                          "reason": str(error), "code_commit": code_commit()})  # fmt: skip
    info = infos[-1]  # the final model's run
    runs = [Path(c.output) for c in configs]
    curve = two_phase_curve(runs) if two_phase else curve_of(runs[0])
    seconds = sum(i["seconds"] for i in infos)
    grid_record = asdict(grid)
    if not two_phase:
        del grid_record["phase1_fraction"]  # one-phase cells record the grid as before the two-phase cells
    result = {
        "cell": cell.name, **asdict(cell), "status": "complete", "label": ARCHS[cell.arch].label,
        "grid": {**grid_record, "steps": grid.steps, "eval_steps": grid.eval_steps},
        "pretrain_config": info["pretrain_config"], "model_config": info["model_config"],
        "parameters": info["parameters"], "forward_flops_per_token_nominal": info["forward_flops_per_token"],
        "final_eval_loss": info["eval_loss"], "train_seconds": seconds,
        "seconds_per_step": seconds_per_step(infos), "command": info["command"],
        "code_commit": code_commit(), **curve,
    }  # fmt: skip
    if two_phase:  # the top-level run fields are phase 2's (the final model); each phase's here
        result["phases"] = [
            {"phase": n, "arch": key, "steps": i["global_step"], "tokens": i["tokens_seen"],
             "pretrain_config": i["pretrain_config"], "model_config": i["model_config"], "parameters": i["parameters"],
             "forward_flops_per_token_nominal": i["forward_flops_per_token"], "final_eval_loss": i["eval_loss"],
             "train_seconds": i["seconds"]}
            for n, (key, i) in enumerate(zip((ARCHS[cell.arch].phase1, cell.arch), infos, strict=True), 1)
        ]  # fmt: skip
    return _write_result(grid, cell, result)


def _write_result(grid: Grid, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    out = results_dir(grid) / f"{cell.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(portable_paths(json.dumps(result, indent=1)) + "\n")
    os.replace(tmp, out)
    return json.loads(out.read_text())


def portable_paths(text: str) -> str:
    """`text` with this machine's absolute paths written relative to the repository (inside it), as ../ (beside
    it) or with ~ (the home directory), as experiments/run.py stores them: the JSONs are committed."""
    for prefix, short in ((REPO, ""), (REPO.parent, "../"), (Path.home(), "~/")):
        if prefix.parent != prefix:  # never the root directory itself
            text = re.sub(rf"(?<![\w.~/-]){re.escape(str(prefix))}/", short, text)
    return text


def code_commit() -> str | None:
    """The commit of the modetune code that ran (recorded with each cell)."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def run_cells(grid: Grid, cells: list[Cell], jobs: int, forward: list[str]) -> None:
    """Each cell in-process (jobs = 1) or in its own one-thread process, `jobs` at a time."""
    todo = [c for c in cells if finished(grid, c) is None]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already complete; running {len(todo)}", flush=True)
    if jobs <= 1:
        for cell in todo:
            result = run_cell(grid, cell)
            print(f"{cell.name}: {result['status']}, final held-out loss {final_loss(result):.4f}", flush=True)
        return

    def child(cell: Cell) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, *forward, "--cells", cell.name]
        code = subprocess.run(cmd, env=env, check=False).returncode
        print(f"{cell.name}: {'done' if code == 0 else f'failed (exit {code})'}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(child, todo))
    if any(codes):
        raise SystemExit(1)


def run_sweep(grid: Grid, jobs: int, forward: list[str]) -> None:
    """Phase 1 until every sweep is done: a best rate at an edge adds the next rate out (`arch_rates`)."""
    while any(finished(grid, c) is None for c in sweep_cells(grid)):
        run_cells(grid, sweep_cells(grid), jobs, forward)


# -- the plan ------------------------------------------------------------------------------------------------
def measure_seconds(grid: Grid, arch: str, steps: int = 3) -> tuple[float, float]:
    """(seconds per training step, seconds per held-out evaluation pass) of `arch` at the grid's size and batch,
    one thread, random tokens, after one warm-up step: a few steps, not a run. A two-phase architecture: its
    phase-2 model, built fresh (the same modules and routers as when built from phase 1's layers)."""
    torch.set_num_threads(1)
    options = ARCHS[arch].options(grid)
    cfg = run_config(grid, Path("-"), options, grid.learning_rates[0], grid.seeds[0], grid.steps)
    tokenizer = load_tokenizer(cfg.tokenizer)
    model = build_model(cfg, tokenizer).train()
    hf_set_seed(0)
    ids = torch.randint(0, len(tokenizer), (grid.batch_size, grid.block_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)

    def step() -> None:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False)
        forward = time.perf_counter() - start
    return per_step, forward * math.ceil(grid.eval_blocks / grid.batch_size)


def plan(grid: Grid, measure_steps: int = 3) -> str:
    """cells x measured seconds per step x steps (+ evaluations) = hours, per architecture and in total."""
    sweep = len(grid.learning_rates)
    seeds = len(grid.seeds) - 1
    evals = grid.steps // grid.eval_steps + 1  # every checkpoint, plus the final evaluation
    lines = [
        f"grid: {len(grid.archs)} architectures x ({sweep} learning rates, seed {grid.seeds[0]}; then {seeds} more "
        f"seeds at the best rate) = {len(grid.archs) * (sweep + seeds)} cells; {grid.steps} steps x "
        f"{grid.tokens_per_step} tokens = {grid.steps * grid.tokens_per_step:,} tokens per cell, held-out loss "
        f"every {grid.eval_steps} steps on {grid.eval_blocks} blocks; corpus {', '.join(grid.corpus)}",
        "",
        "| arch | s/step (measured, 1 thread) | eval pass (s) | hours per cell | cells | hours |",
        "|---|---|---|---|---|---|",
    ]
    measured: dict[str, tuple[float, float]] = {}  # by the options measured: the same model is measured once

    def seconds(arch: str) -> tuple[float, float]:
        key = json.dumps(ARCHS[arch].options(grid), sort_keys=True)
        if key not in measured:
            measured[key] = measure_seconds(grid, arch, measure_steps)
        return measured[key]

    total, notes = 0.0, []
    for arch in grid.archs:
        phase1 = ARCHS[arch].phase1
        if phase1:  # phase 1 at its architecture's step time, phase 2 at the MoM's
            first = grid.phase1_steps
            (s1, e1), (s2, e2) = seconds(phase1), seconds(arch)
            n1, n2 = first // grid.eval_steps + 1, (grid.steps - first) // grid.eval_steps + 1
            cell_seconds = first * s1 + n1 * e1 + (grid.steps - first) * s2 + n2 * e2
            per_step, per_eval = (first * s1 + (grid.steps - first) * s2) / grid.steps, (n1 * e1 + n2 * e2) / (n1 + n2)
            notes.append(f"{arch}: phase 1 ({phase1}) {first} steps at {s1:.3f} s/step, {n1} evaluations at "
                         f"{e1:.2f} s; phase 2 (MoM from its layers) {grid.steps - first} steps at {s2:.3f} s/step, "
                         f"{n2} evaluations at {e2:.2f} s")  # fmt: skip
        else:
            per_step, per_eval = seconds(arch)
            cell_seconds = grid.steps * per_step + evals * per_eval
        hours = cell_seconds / 3600
        n = sweep + seeds
        total += n * hours
        lines.append(f"| {arch} | {per_step:.3f} | {per_eval:.2f} | {hours:.2f} | {n} | {n * hours:.1f} |")
    lines += ["", *notes, *([""] if notes else []),
              f"total: {total:.1f} hours of one core; with --jobs 2 on two free cores about {total / 2:.1f} "
              "hours (cells queue behind the slowest; the seeds phase starts when the sweep is done)"]  # fmt: skip
    return "\n".join(lines)


# -- the report ----------------------------------------------------------------------------------------------
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean over seeds (low = high = nan with one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _fmt(stats: tuple[float, float, float], signed: bool = False) -> str:
    mean, lo, hi = stats
    f = "{:+.3f}" if signed else "{:.3f}"
    if math.isnan(mean):
        return "-"
    return f.format(mean) + ("" if math.isnan(lo) else f" [{f.format(lo)}, {f.format(hi)}]")


def loss_at(result: dict[str, Any], key: str, x: float) -> float:
    """The held-out loss at `x` tokens or FLOPs (`key`), linear between checkpoints; nan outside the curve."""
    points = [(p[key], p["eval_loss"]) for p in result["points"]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1] if points and math.isclose(points[-1][0], x) else math.nan


def load_results(grid: Grid) -> dict[str, dict[str, Any]]:
    folder = results_dir(grid)
    if not folder.is_dir():
        return {}
    loaded = (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
    return {r["cell"]: r for r in loaded if r.get("status") == "complete"}


def main_cells(grid: Grid, results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per architecture, the finished cells at its best rate (the sweep's seed first)."""
    rates = best_rates(grid)
    return {
        arch: [results[c.name] for s in grid.seeds if (c := Cell(arch, lr, s)).name in results]
        for arch, lr in rates.items()
        if lr is not None
    }


def provisional_cells(grid: Grid, results: dict[str, dict[str, Any]]) -> tuple[float, dict[str, list[dict[str, Any]]]]:
    """(rate, per architecture its finished seed-0 cell at that rate): the rate at which most architectures have
    finished (the first in the grid's order on a tie). What the report shows, marked provisional, while no
    architecture has finished its sweep."""
    by_rate = {lr: {a: [r] for a in grid.archs if (r := results.get(Cell(a, lr, grid.seeds[0]).name))}
               for lr in grid.learning_rates}  # fmt: skip
    rate = max(grid.learning_rates, key=lambda lr: len(by_rate[lr]))
    return rate, by_rate[rate]


def figure(grid: Grid, by_arch: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Held-out loss against tokens and against cumulative forward FLOPs: mean over seeds, band = 95% t-interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in (
        (axes[0], "tokens", "training tokens"),
        (axes[1], "forward_flops", "cumulative forward FLOPs"),
    ):
        for arch, cells in by_arch.items():
            xs = [p[key] for p in cells[0]["points"]]
            if key == "forward_flops":  # seeds differ slightly in MoM's realised FLOPs: their mean
                xs = [sum(c["points"][i][key] for c in cells) / len(cells) for i in range(len(xs))]
            stats = [t_interval([c["points"][i]["eval_loss"] for c in cells]) for i in range(len(xs))]
            line = ax.plot(xs, [s[0] for s in stats], marker=".", label=f"{ARCHS[arch].label} (n={len(cells)})")[0]
            if len(cells) > 1:
                ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], color=line.get_color(), alpha=0.2)
            boundary = [x for x, p in zip(xs, cells[0]["points"], strict=True) if p.get("phase") == 1]
            if boundary and len(boundary) < len(xs):  # a two-phase cell: a dotted line at phase 1's last point
                ax.axvline(boundary[-1], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss (nats)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MoM vs controls, corpus {', '.join(grid.corpus)} (mean over seeds, band: 95% t-interval)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


# (first, second): a row when both have finished cells at their best rates, paired by seed. mom-2phase - vanilla is
# the two-phase recipe against vanilla on the same total tokens (the question of issue 32); - mom: against MoM from
# scratch on them.
COMPARISONS = (("mom", "vanilla"), ("mom", "vanilla-flops"), ("mom", "vanilla-gated"),
               ("mom-authors", "vanilla-flops"), ("vanilla-gated", "vanilla"), ("vanilla-flops", "vanilla"),
               ("mom-2phase", "vanilla"), ("mom-2phase", "mom"))  # fmt: skip


def report(grid: Grid) -> str:
    """The markdown between the curve markers of RESULTS.md (and the PNG beside it): sweep, curves, tables."""
    results = load_results(grid)
    by_arch = main_cells(grid, results)
    rel = results_dir(grid).relative_to(HERE)
    out = [BEGIN, f"### Learning curves, corpus `{', '.join(grid.corpus)}` (written by `curves.py --report`)", ""]
    out.append(
        f"{grid.steps} steps x {grid.batch_size} x {grid.block_size} tokens = {grid.steps * grid.tokens_per_step:,} "
        f"tokens per run, held-out loss every {grid.eval_steps * grid.tokens_per_step:,} tokens on "
        f"{grid.eval_blocks} held-out blocks spread evenly over the held-out set; AdamW, cosine, warm-up {grid.warmup_fraction:.0%}; learning rates "
        f"{', '.join(f'{lr:g}' for lr in grid.learning_rates)} at seed {grid.seeds[0]}, then seeds "
        f"{', '.join(map(str, grid.seeds[1:]))} at each architecture's best rate; a best at the sweep's lowest "
        f"(highest) rate adds half (twice) that rate, up to {grid.max_extensions} times a side, so every best is "
        f"bracketed by worse rates or at that limit. Per-cell curves: `{rel}/`."
    )
    two_phase = [a for a in grid.archs if ARCHS[a].phase1]
    if two_phase:
        first = grid.phase1_steps
        out[-1] += (
            f" Two-phase cells ({', '.join(two_phase)}): phase 1 trains {ARCHS[two_phase[0]].phase1} for {first} "
            f"steps ({first * grid.tokens_per_step:,} tokens), phase 2 the MoM built from its layers for the other "
            f"{grid.steps - first}, each phase its own cosine schedule at the cell's learning rate; one curve over "
            "both (dotted line in the figure: the phase boundary; realised FLOPs per token: the mean over both "
            "phases), compared with vanilla on the same total tokens."
        )
    # the sweep
    columns = sorted({lr for rates in arch_rates(grid).values() for lr in rates})
    out += ["", "| arch | " + " | ".join(f"lr {lr:g}" for lr in columns) + " |",
            "|---|" + "---|" * len(columns)]  # fmt: skip
    rates = best_rates(grid)
    for arch in grid.archs:
        cells = []
        for lr in columns:
            r = finished(grid, Cell(arch, lr, grid.seeds[0]))
            text = "-" if r is None else "diverged" if r["status"] == "diverged" else f"{r['final_eval_loss']:.3f}"
            cells.append(f"**{text}**" if rates.get(arch) == lr else text)
        out.append(f"| {arch} | " + " | ".join(cells) + " |")
    shown_rates: dict[str, float] = {arch: rate for arch, rate in rates.items() if rate is not None}
    if by_arch and (waiting := sweeps_to_finish(grid)):
        out += ["", "Not yet in the figure and tables below, their sweeps unfinished (rates still to run at seed "
                f"{grid.seeds[0]}): " + "; ".join(f"{a} ({', '.join(f'{lr:g}' for lr in todo)})"
                                                   for a, todo in waiting.items()) + "."]  # fmt: skip
    if not by_arch:
        rate, by_arch = provisional_cells(grid, results)
        if not by_arch:
            return "\n".join([*out, "", "(no cell has finished yet)", END])
        shown_rates = dict.fromkeys(by_arch, rate)
        out += ["", f"**Provisional: no architecture has finished its sweep yet.** The curves and tables below are "
                f"the cells finished at one rate (lr {rate:g}, seed {grid.seeds[0]}), one "
                "seed each and not at each architecture's best rate, so they have no intervals and decide nothing; "
                "they are replaced by the best-rate cells with their seeds as those finish."]  # fmt: skip
    png = figure(grid, by_arch, results_dir(grid) / "curves.png")
    out += ["", f"![held-out loss against tokens and FLOPs]({png.relative_to(HERE)})", ""]
    # per architecture at its best rate
    budget = min(c["forward_flops"] for cells in by_arch.values() for c in cells)
    out += [f"Final held-out loss and the loss at equal compute ({budget:.3g} cumulative forward FLOPs, the smallest "
            "total of any cell; linear between checkpoints), mean over seeds [95% t-interval over seeds]. A run "
            "read at equal FLOPs before its end is mid-schedule (its learning rate not yet decayed), so the cleaner "
            "equal-compute comparison is MoM against vanilla, equal FLOPs, at the end of both runs. Seed "
            f"{grid.seeds[0]} also chose the learning rate on these held-out blocks; the other seeds did not:", "",
            "| arch | layers / rounds | lr | seeds | params total / non-emb. | fwd MFLOPs/token (realised) | final loss "
            "| perplexity | loss at equal FLOPs | final loss, seeds that did not choose the rate |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arch, cells in by_arch.items():
        final = t_interval([c["final_eval_loss"] for c in cells])
        at_budget = t_interval([loss_at(c, "forward_flops", budget) for c in cells])
        unselected = [c["final_eval_loss"] for c in cells if c["seed"] != grid.seeds[0]]  # free of the rate's pick
        p = cells[0]["parameters"]
        mflops = sum(c["realised_flops_per_token"] for c in cells) / len(cells) / 1e6
        model = cells[0]["model_config"]
        depth = model.get("num_rounds") or model.get("num_hidden_layers")
        out.append(f"| {ARCHS[arch].label} | {depth} | {shown_rates[arch]:g} | {len(cells)} | {p['total']:,} / "
                   f"{p['non_embedding']:,} | {mflops:.2f} | {_fmt(final)} | {math.exp(final[0]):.1f} | "
                   f"{_fmt(at_budget)} | {_fmt(t_interval(unselected)) if unselected else '-'} |")  # fmt: skip
    # paired differences over training
    quarters = [round(grid.steps * q / 4) for q in (1, 2, 3, 4)]
    table = ["", "Differences in held-out loss, paired by seed, mean [95% t-interval over seeds] (negative: the first "
            "is better), at a quarter, half, three quarters and all of the tokens, and at equal FLOPs:", "",
            "| comparison | seeds | " + " | ".join(f"{s * grid.tokens_per_step:,} tokens" for s in quarters)
            + " | equal FLOPs |", "|---|---|" + "---|" * (len(quarters) + 1)]  # fmt: skip
    rows = []
    for a, b in COMPARISONS:
        if a not in by_arch or b not in by_arch:
            continue
        pairs = [(x, y) for x in by_arch[a] for y in by_arch[b] if x["seed"] == y["seed"]]
        if not pairs:
            continue
        row = []
        for step in quarters:
            tokens = step * grid.tokens_per_step
            row.append(
                _fmt(t_interval([loss_at(x, "tokens", tokens) - loss_at(y, "tokens", tokens) for x, y in pairs]), True)
            )
        row.append(_fmt(t_interval([loss_at(x, "forward_flops", budget) - loss_at(y, "forward_flops", budget)
                                    for x, y in pairs]), True))  # fmt: skip
        rows.append(f"| {ARCHS[a].label} - {ARCHS[b].label} | {len(pairs)} | " + " | ".join(row) + " |")
    return "\n".join([*out, *([*table, *rows] if rows else []), END])


def write_report(grid: Grid) -> Path:
    block = report(grid)
    return replace_marked_block(REPORT, BEGIN, END, block, heading="## Learning curves (issue 32)\n\n")


# -- the command line ----------------------------------------------------------------------------------------
def grid_from(args: argparse.Namespace) -> Grid:
    return Grid(corpus=tuple(args.corpus or ("shared",)), tokens=args.tokens, every=args.every, archs=tuple(args.archs),
                phase1_fraction=args.phase1_fraction)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("sweep", "seeds", "all"), help="run a phase's cells")
    parser.add_argument("--cells", nargs="+", default=[], help="run these cells (see --list)")
    parser.add_argument("--list", action="store_true", help="list the cells and their state")
    parser.add_argument("--plan", action="store_true", help="measure a few steps per arch and print the hours")
    parser.add_argument("--report", action="store_true", help="write the curves PNG and tables into RESULTS.md")
    parser.add_argument("--jobs", type=int, default=1, help="cells at once, each a one-thread process")
    parser.add_argument("--corpus", nargs="+", help="`modetune pretrain --corpus` values (default: shared)")
    parser.add_argument("--tokens", type=int, default=Grid.tokens, help="training tokens per run")
    parser.add_argument("--every", type=int, default=Grid.every, help="held-out loss every this many tokens")
    parser.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(Grid.archs),
                        help="architectures of the grid (default: the six of the docstring)")  # fmt: skip
    parser.add_argument("--phase1-fraction", type=float, default=Grid.phase1_fraction,
                        help="two-phase cells: share of the tokens in phase 1 (vanilla), rounded to whole "
                             "evaluation intervals (default: 0.5, see the docstring)")  # fmt: skip
    args = parser.parse_args(argv)
    grid = grid_from(args)
    forward = [*(["--corpus", *args.corpus] if args.corpus else []), "--tokens", str(args.tokens),
               "--every", str(args.every), "--archs", *args.archs,
               "--phase1-fraction", str(args.phase1_fraction)]  # fmt: skip
    if args.plan:
        print(plan(grid))
        return 0
    if args.report:
        print(f"wrote {write_report(grid)}")
        return 0
    everything = {c.name: c for c in [Cell(a, lr, s) for a in grid.archs for lr in candidate_rates(grid)
                                       for s in grid.seeds]}  # fmt: skip
    if args.list:
        rates, swept = best_rates(grid), arch_rates(grid)
        for cell in everything.values():
            phase = "sweep" if cell.seed == grid.seeds[0] else "seeds"
            if cell.learning_rate not in swept[cell.arch]:
                continue  # a rate this architecture's sweep has not reached
            if phase == "seeds" and rates.get(cell.arch) not in (None, cell.learning_rate):
                continue  # not this architecture's best rate
            done = finished(grid, cell)
            state = done["status"] if done else ("started" if run_dir(grid, cell).is_dir() else "-")
            print(f"{cell.name:32s} {phase:6s} {state}")
        return 0
    if args.cells:
        unknown = [n for n in args.cells if n not in everything]
        if unknown:
            print(f"unknown cells: {unknown}; see --list", file=sys.stderr)
            return 2
        cells = [everything[n] for n in args.cells]
        run_cells(grid, cells, args.jobs, forward)
    elif args.phase:
        if args.phase in ("sweep", "all"):
            run_sweep(grid, args.jobs, forward)
        missing = [a for a, lr in best_rates(grid).items() if lr is None]
        if args.phase != "sweep" and missing:
            print(f"sweep not finished for {', '.join(missing)}: their seeds are not run yet", flush=True)
        if args.phase in ("seeds", "all"):
            run_cells(grid, seed_cells(grid), args.jobs, forward)
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "experiments/mom/curves.py"))
