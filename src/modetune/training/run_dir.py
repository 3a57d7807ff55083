"""The run directory every recipe writes (`modetune train`, `modetune pretrain`): claimed and locked before
anything is read, checked against --resume/--overwrite, its metrics cut back on resume, and removed again
when the start fails, so a failed start leaves the file system as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modetune.analysis.curves import plot_training_curves
from modetune.errors import ModetuneError
from modetune.files import atomic_write_text
from modetune.runs import RUN_FILE, read_run_info, write_run_info
from modetune.training.lock import LOCK_NAME, OutputNotWritableError, RunLock, acquire_run_lock
from modetune.training.trainer import checkpoint_step, latest_complete_checkpoint

logger = logging.getLogger(__name__)

# settings a resumed run may change: where it stops and how often it saves or evaluates
RESUMABLE_CHANGES = ("resume", "overwrite", "max_steps", "stop_after_step", "save_steps", "eval_steps", "method")


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job (or a single process): the only one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Claim:
    """The output directory, held by this training: its lock and the top-most directory this run created."""

    lock: RunLock | None = None
    created: Path | None = None

    def keep(self) -> None:
        """The run has started: from here on the directory holds it and is never removed."""
        self.created = None

    def abandon(self) -> None:
        """A failed start: leave the file system as it was (no empty or half-made output directory)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            self.created = None


def claim_output(out: Path) -> Claim:
    """Create `out` if needed and lock it; refuses at once if another live training holds it."""
    top, probe = None, out.absolute()
    while not probe.exists() and probe != probe.parent:
        top, probe = probe, probe.parent
    if out.exists() and not out.is_dir():
        raise ModetuneError(f"--output {out} is a file, not a directory; choose another --output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot create {out} ({exc.strerror}); choose a writable --output") from None
    claim = Claim(created=top)
    try:
        claim.lock = acquire_run_lock(out)
    except BaseException:
        claim.abandon()
        raise
    return claim


@contextmanager
def run_directory(out: Path, is_main: bool = True) -> Iterator[Claim]:
    """Hold `out` for one run (rank 0 only under a multi-process launch): locked while the block runs, removed
    again (with any parent this run created) if the block fails before `Claim.keep`, never after it."""
    claim = claim_output(out) if is_main else Claim()
    try:
        yield claim
    finally:
        claim.abandon()


def _field_defaults(config: Any) -> dict[str, Any]:
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def check_output(
    out: Path, resume: bool, overwrite: bool, configs: dict[str, Any], is_main: bool = True
) -> Path | None:
    """Check the run directory (read only); returns the checkpoint to resume from (None: start at step 0).

    `configs` maps run.json keys to the configs this command runs with (e.g. ``{"train_config": cfg}``): a
    resume with other settings (but those in `RESUMABLE_CHANGES`) is refused, naming each difference. A run
    killed before its first complete checkpoint starts again from step 0 with the same settings.
    """
    if resume:
        if not (out / RUN_FILE).is_file():
            raise ModetuneError(f"--resume: {out} is not a run directory (no {RUN_FILE}); start it without --resume")
        previous = read_run_info(out)
        for key, config in configs.items():
            # a setting the run predates (saved by an older modetune) had its field's default then
            before = {**_field_defaults(config), **previous.get(key, {})}
            changed = {
                k: (before.get(k), v)
                for k, v in config.to_dict().items()
                if k not in RESUMABLE_CHANGES and before.get(k) != v
            }
            if changed:
                detail = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                raise ModetuneError(f"--resume with different settings than the run in {out} ({detail})")
        checkpoint = latest_complete_checkpoint(out)
        _refuse_a_passed_stop(configs, checkpoint)
        if checkpoint is None:
            logger.info("%s has no complete checkpoint yet: training it again from the start", out)
        return checkpoint
    if is_main and out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not overwrite:
        raise ModetuneError(
            f"{out} already exists and is not empty; pass --resume to continue it, --overwrite to write into it, "
            "or choose another --output"
        )
    return None


def _refuse_a_passed_stop(configs: dict[str, Any], checkpoint: Path | None) -> None:
    """A --stop-after-step the resumed run has already passed would train past it: refused, with the step."""
    stop = max((getattr(c, "stop_after_step", 0) for c in configs.values()), default=0)
    if stop and checkpoint is not None and checkpoint_step(checkpoint) >= stop:
        raise ModetuneError(
            f"--stop-after-step {stop}: the run is already at step {checkpoint_step(checkpoint)} ({checkpoint}); "
            "give a later step, or leave it out to train to the end"
        )


def record_run_end(
    out: Path, info: dict[str, Any], global_step: int, started: float, status: str = "complete", **results: Any
) -> None:
    """run.json at the end of a session: 'complete' with its results, or 'stopped' at its step (--stop-after-step),
    which --resume continues. `seconds` times this session."""
    info.update(
        status=status,
        **{"finished" if status == "complete" else status: datetime.now(timezone.utc).isoformat()},
        global_step=global_step,
        **results,
        seconds=round(time.time() - started, 1),
    )
    write_run_info(out, info)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None  # a torn line from a killed run


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop the lines logged after the checkpoint (they are logged again) and torn ones, atomically."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if (step := _step_of(line)) is not None and step <= last_step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def prepare_resume(out: Path, resume_from: Path | None, info: dict[str, Any]) -> None:
    """A resumed run keeps its start time and adds this resumption to its history; metrics after the
    checkpoint are dropped (they are logged again)."""
    previous = read_run_info(out) if (out / RUN_FILE).is_file() else {}
    info["started"] = previous.get("started", info["started"])
    info["resumed"] = [
        *previous.get("resumed", []),
        {"from": str(resume_from or "start"), "at": datetime.now(timezone.utc).isoformat()},
    ]
    truncate_metrics(out / "metrics.jsonl", checkpoint_step(resume_from) if resume_from is not None else 0)


def segment_start_step(info: dict[str, Any]) -> int:
    """The step a run's last training segment started from (0 unless it was resumed from a checkpoint): a
    run's `seconds` time only that segment, so its cost per step is `seconds / (global_step - this)`."""
    resumed = info.get("resumed") or []
    origin = resumed[-1]["from"] if resumed else "start"
    return 0 if origin == "start" else checkpoint_step(origin)


def draw_training_curves(out: Path) -> Path | None:
    """training_curves.png from the run's metrics; a failed plot is a warning, never a lost run."""
    try:
        return plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    except Exception as exc:  # a plot must never cost the user their trained model
        logger.warning("could not draw the training curves: %s", exc)
        return None
