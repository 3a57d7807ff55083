"""Print the option tables of docs/options.md from the CLI parsers; `--write` puts them between its OPTIONS markers.

    python scripts/docs_options.py --write
tests/test_readme.py fails when docs/options.md's tables are not this script's output, so a new or changed option
cannot go undocumented and a hand edit to a table cannot drift from the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modetune.cli import build_parser
from modetune.files import replace_marked_block

OPTIONS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"
START, END = "<!-- OPTIONS -->", "<!-- /OPTIONS -->"


def options_markdown() -> str:
    """Every subcommand's options (nested ones such as `data fetch` included), one table per option group."""
    lines: list[str] = []
    for name, parser in _subcommands(build_parser(), "modetune"):
        lines.append(f"## `{name}`")
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if a.dest != "help" and not _is_subcommands(a)]
            if not actions:
                continue
            lines += ["", f"*{group.title}*", "", "| option | what it does |", "|---|---|"]
            lines += [_row(a) for a in actions if not a.option_strings]
            lines += [_row(a) for a in actions if a.option_strings]
        lines.append("")
    return "\n".join(lines)


def write_page(page: Path = OPTIONS_PAGE) -> None:
    try:
        replace_marked_block(page, START, END, f"{START}\n\n{options_markdown()}\n{END}", if_missing="error")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def page_block(page: Path = OPTIONS_PAGE) -> str:
    """The page's text between the OPTIONS markers, as `write_page` puts it there."""
    return page.read_text().partition(START)[2].partition(END)[0].strip("\n")


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    for action in parser._actions:
        if _is_subcommands(action):
            for name, sub in action.choices.items():
                if any(_is_subcommands(a) for a in sub._actions):
                    yield from _subcommands(sub, f"{prefix} {name}")
                else:
                    yield f"{prefix} {name}", sub


def _is_subcommands(action: argparse.Action) -> bool:
    return isinstance(action, argparse._SubParsersAction)


def _row(action: argparse.Action) -> str:
    text = _text(action.help)
    if action.choices is not None:
        text += f" (one of: {', '.join(f'`{c}`' for c in action.choices)})"
    if action.option_strings and action.default not in (None, "", argparse.SUPPRESS, False) and "default" not in text:
        text += f" (default: `{action.default}`)"
    name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    return f"| {name} | {text} |"


def _text(help_text: str | None) -> str:
    return (help_text or "").replace("|", "/").replace("\n", " ").replace("%%", "%")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_page()
        print(f"wrote the option tables into {OPTIONS_PAGE}")
    else:
        print(options_markdown())
