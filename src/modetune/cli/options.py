"""Command-line options generated from config dataclasses, so help text has one source of truth."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from modetune.errors import ConfigError


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a field annotation like `int`, `float | None`, `list[str]`."""
    if isinstance(annotation, str):
        annotation = eval(
            annotation, {"list": list, "str": str, "int": int, "float": float, "bool": bool, "None": None}
        )
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = (), shared: tuple[str, ...] = ()
) -> None:
    """One option per field of `cls`, its help from the field's `help_field` text.

    `shared` names fields that an earlier config already added as options (two methods' same setting, e.g.
    `--router-lr-scale`): the one option then serves both, defaults to None so each config keeps its own
    default when it is not given, and its help lists each method's default.
    """
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name in shared:
            _share_option(parser, f, title)
            continue
        _add_field_option(group, f)


def _add_field_option(group: Any, f: Any) -> None:
    """One field as an option: its flag (metadata `flag`, default --field-name), help, and where given its
    `choices`, `metavar` and `required` (all from the field's metadata)."""
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    typ, is_list = _base_type(f.type)
    default = f.default if f.default is not MISSING else None
    help_text = meta.get("help", "")
    extra = {k: meta[k] for k in ("choices", "required") if k in meta}
    if typ is bool:
        group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif is_list:
        group.add_argument(
            flag, dest=f.name, type=typ, nargs="+", action="extend", default=None, help=help_text,
            metavar=meta.get("metavar", f.name.upper()), **extra,
        )  # fmt: skip
    else:
        shown = "" if default in (None, "") else f" (default: {default})"
        metavar = None if "choices" in meta else meta.get("metavar", f.name.upper())
        group.add_argument(
            flag, dest=f.name, type=typ, default=default, help=help_text + shown, metavar=metavar, **extra
        )


def _share_option(parser: argparse.ArgumentParser, f: Any, title: str) -> None:
    flag = "--" + f.name.replace("_", "-")
    action = parser._option_string_actions.get(flag)
    if action is None:
        raise ValueError(f"shared option {flag} must be added by an earlier config first")
    first_default, action.default = action.default, None
    note = f"{f.default} in {title}"
    if "(default: " in (action.help or ""):
        head, _, _ = action.help.rpartition(" (default: ")
        action.help = f"{head} (default: {first_default}; {note})"
    else:
        action.help = f"{action.help} ({note})"


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """`cls` from the parsed options; an option left at None keeps the field's own default (list options not
    given, and shared options whose configs differ in default)."""
    values = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if value is None and (f.default_factory is not MISSING or f.default not in (MISSING, None)):
                continue
            values[f.name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def setup_logging(*quiet: str) -> None:
    """INFO messages from modetune (progress of long steps); the field's libraries only warn."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "peft", "accelerate", "httpx", *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)


def print_stopped_session(run_dir: Any, global_step: int) -> None:
    """What `modetune train`/`pretrain` print when --stop-after-step ended the session before its last step."""
    print(f"stopped after step {global_step} (--stop-after-step); the checkpoint is in {run_dir}")
    print("continue with the same command and --resume")
