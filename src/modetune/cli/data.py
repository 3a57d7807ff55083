"""`modetune data`: benchmark files from their public sources.

    modetune data fetch [TASK ...|all] [--dir DIR] [--force]
    modetune data list [--dir DIR]

All logic lives in `modetune.data.fetch` (files) and `modetune.evaluation.task_data` (task names); this
module only parses options and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modetune.data.fetch import DATA_FILES, data_cache_dir, verify_file
from modetune.evaluation.task_data import citations, fetch_data

_EPILOG = """\
fetchable: gsm8k svamp aqua multiarith addsub singleeq mawps mathqa boolq piqa siqa winogrande arc_easy
           arc_challenge openbookqa gsm8k_openai (GSM8K's original train/test); groups: all, arithmetic,
           commonsense. HellaSwag's file is too large to pin here: pass it with --data.
cache:     $MODETUNE_DATA_DIR (first entry), else ~/.cache/modetune/data; `modetune eval` searches it.
mirror:    $MODETUNE_DATA_URL replaces https://raw.githubusercontent.com (same OWNER/REPO/COMMIT/PATH layout).
examples:
  modetune data fetch gsm8k
  modetune data fetch all
  modetune eval --model smollm2-135m --task gsm8k --limit 20 --output out/base
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="download the benchmark files (pinned, checked by sha256) into the data cache",
        description="Benchmark files from their public sources, pinned by commit and sha256.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download and verify task files", epilog=_EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    fetch.add_argument("names", nargs="*", default=["all"], metavar="TASK", help="task names or groups (default: all)")
    fetch.add_argument(
        "--dir", default=None, help="destination (default: $MODETUNE_DATA_DIR or ~/.cache/modetune/data)"
    )
    fetch.add_argument("--force", action="store_true", help="download again even if a verified copy is present")
    listing = actions.add_parser("list", help="show the pinned files and whether they are in the cache")
    listing.add_argument("--dir", default=None, help="data directory to check (default: the data cache)")
    parser.set_defaults(run=run, _parser=parser)


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir).expanduser() if args.dir else data_cache_dir()
    if args.data_command == "list":
        for spec in DATA_FILES:
            state = "ok" if verify_file(spec, root) else "missing"
            print(f"{spec.name:<15} {spec.local:<26} {spec.size:>9} bytes  {state}")
        print(f"data directory: {root}")
        return 0
    if args.data_command != "fetch":
        args._parser.print_help()
        return 0

    def report(spec, path, downloaded) -> None:
        print(f"{'downloaded' if downloaded else 'up to date'}: {path} (sha256 ok)", flush=True)

    fetch_data(args.names, root, force=args.force, on_file=report)
    print("\nLicenses and citations:")
    for line in citations(args.names):
        print(f"  {line}")
    print(f"\nfiles are in {root}; `modetune eval --task NAME` finds them there")
    return 0
