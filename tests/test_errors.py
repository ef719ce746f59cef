"""Bad input is one line; a bug keeps its traceback (`resnext_lit.errors.UserError`)."""

import pytest
from lightning.pytorch.cli import LightningCLI

from resnext_lit import cli
from resnext_lit.errors import UserError


def test_a_user_error_is_one_line_and_status_2(capsys):
    assert cli.main(["summary", "/nonexistent/runs"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: no results.json under /nonexistent/runs"]


def test_any_other_exception_is_a_bug_and_keeps_its_traceback(monkeypatch, capsys):
    """Before UserError, every ValueError printed as one line: a bug looked like a typo. Now
    `main` re-raises it, so Python prints its traceback."""
    def broken(argv):
        raise ValueError("inside the library")

    monkeypatch.setattr("resnext_lit.experiments.summary.main", broken)
    with pytest.raises(ValueError, match="inside the library"):
        cli.main(["summary", "runs"])
    assert "error:" not in capsys.readouterr().err
    assert issubclass(UserError, ValueError)  # `except ValueError` still catches bad input


def test_the_launcher_lists_lightnings_subcommands():
    """`cli` names them without importing Lightning; they must be LightningCLI's."""
    assert cli.TRAINER_SUBCOMMANDS == tuple(LightningCLI.subcommands())
