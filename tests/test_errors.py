"""`exit_status`: how every modetune program (the CLI, the experiment scripts) ends on a user's mistake."""

from __future__ import annotations

import pytest

from modetune.errors import DataError, exit_status


def _raise(error: BaseException):
    def main() -> int:
        raise error

    return main


def test_a_user_error_is_its_message_and_status_2(capsys):
    assert exit_status(_raise(DataError("the file x.jsonl is empty; fill it")), "prog") == 2
    assert capsys.readouterr().err == "prog: error: the file x.jsonl is empty; fill it\n"


def test_quiet_keeps_the_status_and_drops_the_message(capsys):
    assert exit_status(_raise(DataError("boom")), "prog", quiet=True) == 2
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_130_and_a_return_value_passes_through(capsys):
    assert exit_status(_raise(KeyboardInterrupt()), "prog") == 130
    assert capsys.readouterr().err == "prog: interrupted\n"
    assert exit_status(lambda: None, "prog") == 0
    assert exit_status(lambda: 3, "prog") == 3


def test_a_bug_is_not_hidden():
    with pytest.raises(ZeroDivisionError):
        exit_status(lambda: 1 // 0, "prog")
