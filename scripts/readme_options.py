"""Print the README's option tables from the CLI parsers (paste between the OPTIONS markers in README.md).

    python scripts/readme_options.py > /tmp/options.md
tests/test_readme.py fails when an option is missing from the README.
"""

from __future__ import annotations

import argparse

from modetune.cli import build_parser


def main() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        print(f"\n#### `modetune {name}`\n")
        for group in sp._action_groups:
            options = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
            positional = [a for a in group._group_actions if not a.option_strings]
            if not options and not positional:
                continue
            print(f"\n*{group.title}*\n\n| option | what it does |\n|---|---|")
            for a in positional:
                print(f"| `{a.metavar or a.dest}` | {_text(a.help)} |")
            for a in options:
                text = _text(a.help)
                if a.default not in (None, "", argparse.SUPPRESS, False) and "default" not in text:
                    text += f" (default: `{a.default}`)"
                print(f"| {', '.join(f'`{o}`' for o in a.option_strings)} | {text} |")


def _text(help_text: str | None) -> str:
    return (help_text or "").replace("|", "/").replace("\n", " ").replace("%%", "%")


if __name__ == "__main__":
    main()
