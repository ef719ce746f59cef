"""`python -m resnext_lit models` through a real subprocess."""

import subprocess
import sys

import pytest

from resnext_lit.models import list_models


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "resnext_lit", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_models_table_lists_the_zoo():
    result = run_cli("models", "--markdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + len(list_models())
    row = next(line for line in lines if line.startswith("| resnext50_32x4d |"))
    assert row.split(" | ")[4:8] == ["25.03", "4.23", "224", "22.20"]
    cells = {c[0]: c for c in ([x.strip() for x in line.split("|")[1:-1]] for line in lines[2:])}
    assert set(cells) == set(list_models())  # each network once: aliases are a column
    assert cells["resnext50_1x64d"][8:] == ["imagenet", "Table 1, 3", "resnet50"]
    assert cells["resnext29_8x64d"][6:] == ["32", "3.65", "cifar", "Table 7; Fig. 7", ""]
    assert cells["resnext11_8x4d"][6:] == ["16", "", "digits", "no", ""]  # not in the paper


def test_unknown_command_is_one_line():
    result = run_cli("modelz")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown command 'modelz'" in result.stderr


def test_help_lists_every_command_with_one_line(capsys):
    """`help`, `--help` and no command at all: one line per command (no command: exit 2)."""
    from resnext_lit.cli import COMMANDS, HELP, TRAINER_SUBCOMMANDS, main

    assert list(HELP) == [*TRAINER_SUBCOMMANDS, *COMMANDS]
    for argv, code in ((["help"], 0), (["--help"], 0), ([], 2)):
        assert main(argv) == code
        out, err = capsys.readouterr()
        lines = (out or err).splitlines()
        assert lines[0].startswith("usage: python -m resnext_lit <command>")
        assert [line.split()[0] for line in lines[3:]] == list(HELP)


def test_every_tool_answers_help_before_loading_torch_ffcv_or_lightning():
    """`<tool> --help` imports none of the heavy libraries (seconds each): it answers at once."""
    from resnext_lit.cli import COMMANDS

    heavy = ("torch", "lightning", "ffcv", "cv2", "numba", "wandb", "matplotlib")
    check = f"""
import contextlib, io, sys
from resnext_lit.cli import main
for tool in {list(COMMANDS)!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([tool, "--help"])
        except SystemExit as done:
            assert done.code == 0, tool
    assert out.getvalue().startswith("usage: python -m resnext_lit " + tool), tool
    loaded = [name for name in {heavy!r} if name in sys.modules]
    assert not loaded, (tool, loaded)
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_trainer_commands_help_names_the_real_command(capsys):
    from resnext_lit.cli import main

    with pytest.raises(SystemExit) as done:  # argparse exits after printing help
        main(["fit", "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m resnext_lit [options] fit ")


@pytest.mark.slow
def test_models_fits_80_columns_without_cutting_a_number():
    result = run_cli("models")  # piped: Rich renders 80 columns wide
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in result.stdout
    names = {line.split()[0] for line in lines if line.startswith(("resnet", "resnext"))}
    assert names == set(list_models())
    row = next(line for line in lines if line.startswith("resnext50_32x4d "))
    assert row.split()[1:8] == ["50", "32", "4", "25.03", "4.23", "224", "22.20"]
    assert "resnet50 = resnext50_1x64d" in result.stdout  # aliases listed below the table
