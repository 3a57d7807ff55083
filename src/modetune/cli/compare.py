"""`modetune compare RUN_A RUN_B [--pool RUN_A2 RUN_B2 ...]`: paired per-task accuracy differences of
`modetune eval` outputs.

Questions are paired by (task, id, question text); the test is exact McNemar on the discordant
pairs, with a paired-bootstrap 95% CI of B - A. Logic lives in `modetune.evaluation.compare`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from modetune.errors import ConfigError
from modetune.evaluation.compare import compare_runs, render_comparison


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare two `modetune eval` outputs question by question (McNemar, paired bootstrap)",
        description="Per-task accuracy of A and B on the questions both evaluated, B - A with a paired "
        "bootstrap 95% CI, and the exact McNemar p-value (* marks p < 0.05).",
    )
    parser.add_argument(
        "run_a",
        metavar="RUN_A",
        help="eval output directory (results.json + predictions.jsonl), or a directory of them, one per task",
    )
    parser.add_argument(
        "run_b", metavar="RUN_B", help="eval output directory (or a directory of them) to compare against RUN_A"
    )
    parser.add_argument(
        "--pool",
        nargs=2,
        action="append",
        default=[],
        metavar=("RUN_A", "RUN_B"),
        help="pool another pair into the comparison, e.g. the next seed's (one --pool per pair); questions pair "
        "within their own pair, and the test and CI count each question once",
    )
    parser.add_argument("--output", metavar="FILE", default=None, help="also write the comparison as JSON")
    parser.add_argument(
        "--bootstrap", type=int, default=10000, metavar="N", help="bootstrap resamples (default: 10000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap must be at least 100 resamples, got {args.bootstrap}")
    report = compare_runs(
        args.run_a, args.run_b, pool=[tuple(pair) for pair in args.pool], n_resamples=args.bootstrap, seed=args.seed
    )
    console = Console()
    console.print(render_comparison(report))
    console.print(f"test: {report['test']}")
    for side in ("a", "b"):
        only = report[f"tasks_only_in_{side}"]
        if only:
            console.print(f"tasks only in {side.upper()} (not compared): {', '.join(only)}")
    for task, r in report["tasks"].items():
        for side in ("a", "b"):
            if r.get(f"unpaired_{side}"):
                console.print(
                    f"{task}: {r[f'unpaired_{side}']} question(s) of {side.upper()} have no partner in the other run"
                )
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"--output {out}: cannot write the comparison there ({exc.strerror})") from exc
        console.print(f"wrote {out}")
    return 0
