"""`python -m resnext_lit models` through a real subprocess."""

import subprocess
import sys

from resnext_lit.models import list_models


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "resnext_lit", *args], capture_output=True,
                          text=True, timeout=timeout)


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
