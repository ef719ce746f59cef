"""Sweep files and the local runner: `pytest -q tests/test_sweeps.py`.

Every sweep file must pass W&B's own schema, enumerate (with W&B's own engine) to exactly the
paper's settings, and yield agent command lines that the project's CLI parses. The local runner
runs a real 3-point grid on the digits end to end (offline W&B), is resumed, and its outputs
feed the table builder; with --parallel 2 it trains two runs at once, stops both on Ctrl-C and
finishes them when run again.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout, suppress
from pathlib import Path

import pytest
import yaml

from resnext_lit.cli import main as cli
from resnext_lit.experiments.runner import gpu_slots, visible_gpus
from resnext_lit.experiments.sweep import agent_argv, grid_points, load_sweep
from resnext_lit.experiments.sweep import main as sweep_main
from resnext_lit.experiments.table import main as table_main
from resnext_lit.models import model_entry, solve_bottleneck_width
from resnext_lit.models.registry import FIG7, FIG7_WIDE, TABLE3, TABLE3_SETTINGS, TABLE4, TABLE7

from helpers import TESTS, ctrl_c_enabled

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
TINY_FIT = ["--model.warmup_epochs=0", "--data.init_args.batch_size=16",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]


def write_sweep(path: str, name: str, archs: list[str], fit_args: list[str]) -> None:
    """A grid over `archs` of the digits demo with W&B, each run cut short by `fit_args`."""
    Path(path).write_text(yaml.safe_dump({
        "name": name, "method": "grid", "metric": {"name": "val/top1_err", "goal": "minimize"},
        "parameters": {"model.arch": {"values": archs}},
        "command": ["${env}", "${interpreter}", "-m", "resnext_lit", "fit",
                    "--config", "configs/demo.yaml", "--config", "configs/logger/wandb.yaml",
                    *fit_args, "${args}"]}))


def training_records() -> list[Path]:
    """The runs' own results.json files (`<point>/<run id>/`, not the runner's failure notes)."""
    return sorted(p for p in Path("runs").rglob("results.json")
                  if (p.parent / "checkpoints").is_dir())


def archs(name: str) -> list[str]:
    return [p["model.arch"] for p in grid_points(load_sweep(ROOT / "sweeps" / name))]


def setting(arch: str) -> tuple[int, int, int]:
    entry = model_entry(arch)
    return entry["depth"], entry["cardinality"], entry["bottleneck_width"]


def test_the_six_sweep_files_exist():
    assert [p.name for p in SWEEPS] == [
        "demo_cardinality.yaml", "fig7_cifar.yaml", "table3_resnext101.yaml",
        "table3_resnext50.yaml", "table4.yaml", "table7_cifar.yaml"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_a_valid_wandb_grid_over_model_arch(path):
    config = load_sweep(path)  # W&B's schema check, plus no nulls
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "val/top1_err", "goal": "minimize"}
    assert set(config["parameters"]) <= {"model.arch", "seed_everything",
                                         "data.init_args.num_classes"}
    assert "values" in config["parameters"]["model.arch"]  # one categorical: C, d move together
    command = config["command"]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "resnext_lit", "fit"]
    assert command[-1] == "${args}" and command[5] == "--config"
    for i, token in enumerate(command):
        if token == "--config":
            assert (ROOT / command[i + 1]).is_file(), command[i + 1]


def test_table3_grids_are_table2_settings_at_50_and_101_layers():
    for depth in (50, 101):
        grid = archs(f"table3_resnext{depth}.yaml")
        assert grid == list(TABLE3[depth])  # the registry's Table 3 row, in its order
        assert [setting(a) for a in grid] == [(depth, c, d) for c, d in TABLE3_SETTINGS]
    assert [solve_bottleneck_width(c) for c, _ in TABLE3_SETTINGS] == \
        [d for _, d in TABLE3_SETTINGS]


def test_table4_grid_doubles_complexity_by_depth_width_and_cardinality():
    # The registry's Table 4 rows but its two 1x references, which the Table 3 sweep runs.
    references = set(TABLE3[101])
    assert archs("table4.yaml") == [name for _, _, name in TABLE4 if name not in references]
    assert [setting(a) for a in archs("table4.yaml")] == [
        (200, 1, 64), (101, 1, 100), (101, 2, 64), (101, 64, 4)]
    assert [name for _, _, name in TABLE4 if name in references] == [
        "resnext101_1x64d", "resnext101_32x4d"]


def test_table7_grid_is_two_networks_times_two_datasets_times_ten_seeds():
    points = grid_points(load_sweep(ROOT / "sweeps" / "table7_cifar.yaml"))
    assert len(points) == 40
    assert {(p["model.arch"], p["data.init_args.num_classes"], p["seed_everything"])
            for p in points} == {(a, n, s) for a in TABLE7 for n in (10, 100) for s in range(10)}
    assert TABLE7 == ("resnext29_8x64d", "resnext29_16x64d")
    assert all(model_entry(a)["paper"][f"cifar{n}_err"] for a in TABLE7 for n in (10, 100))


def test_fig7_grid_is_cardinality_series_and_width_series():
    grid = archs("fig7_cifar.yaml")
    assert grid == list(dict.fromkeys(a for series in FIG7.values() for a in series))
    assert [setting(a) for a in grid] == [(29, c, 64) for c in (1, 2, 4, 8, 16)] + \
        [(29, 1, d) for d in FIG7_WIDE.values()]


def test_demo_grid_is_small_moves_cardinality_and_is_not_the_papers():
    points = grid_points(load_sweep(ROOT / "sweeps" / "demo_cardinality.yaml"))
    grid = list(dict.fromkeys(archs("demo_cardinality.yaml")))
    assert [setting(a) for a in grid] == [(11, c, 4) for c in (1, 2, 4, 8)]
    # Two seeds of each: the least a claim's interval needs (resnext_lit.experiments.claims).
    assert sorted((p["model.arch"], p["seed_everything"]) for p in points) == \
        [(a, seed) for a in grid for seed in (0, 1)]
    assert all(model_entry(a)["dataset"] == "digits" and not model_entry(a)["in_paper"]
               for a in grid)
    # Its header names the folder the local runner really writes: runs/sweeps/<name>.
    path = ROOT / "sweeps" / "demo_cardinality.yaml"
    folder = f"runs/sweeps/{load_sweep(path)['name']}"
    assert folder in path.read_text()
    assert folder in (ROOT / "Makefile").read_text()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter")
def test_every_agent_command_parses_with_the_project_cli(monkeypatch):
    """Command lines exactly as the agent builds them, parsed by `fit --print_config`: every
    value of every sweep parameter at least once (the grid points that bring a new one)."""
    monkeypatch.chdir(ROOT)
    points = 0
    for path in SWEEPS:
        config = load_sweep(path)
        seen: set[tuple[str, str]] = set()
        for params in grid_points(config):
            new = {(key, repr(value)) for key, value in params.items()} - seen
            if not new:
                continue
            seen |= new
            argv = agent_argv(config, params)
            assert argv[:4] == ["/usr/bin/env", argv[1], "-m", "resnext_lit"]
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    code = cli([*argv[4:], "--print_config"])
                except SystemExit as done:  # jsonargparse exits after printing
                    code = done.code
            assert code in (0, None), (path.name, argv, err.getvalue()[-2000:])
            parsed = yaml.safe_load(out.getvalue())
            assert parsed["model"]["arch"] == params["model.arch"]
            if "seed_everything" in params:
                assert parsed["seed_everything"] == params["seed_everything"]
            if "data.init_args.num_classes" in params:
                assert parsed["data"]["init_args"]["num_classes"] == \
                    params["data.init_args.num_classes"]
            loggers = parsed["trainer"]["logger"]
            assert [lg["class_path"] for lg in loggers][-1] == \
                "resnext_lit.training.wandb_logger.WandbLogger"
            points += 1
        values = {(key, repr(value)) for params in grid_points(config)
                  for key, value in params.items()}
        assert seen == values, path.name
    assert 6 * len(SWEEPS) <= points < 5 + 5 + 4 + 40 + 9 + 4  # fewer than the whole grids


BAD = {
    "bad_method": "method: gird\nparameters: {model.arch: {values: [resnet50]}}\n",
    "null_value": "method: grid\nparameters: {model.arch: {values: [resnet50, null]}}\n",
    "unknown_key": "method: grid\nmetod: grid\nparameters: {model.arch: {value: resnet50}}\n",
    "not_yaml": "method: grid\nparameters: {model.arch: [\n",
    "not_mapping": "- method\n- grid\n",
    "python_tag": "method: !!python/object/apply:os.system [echo pwned]\nparameters: {}\n",
    "bayes": "method: bayes\nmetric: {name: val/top1_err, goal: minimize}\n"
             "parameters: {model.arch: {values: [resnet50]}}\n",
    "foreign_command": "method: grid\nparameters: {model.arch: {values: [resnet50]}}\n"
                       "command: ['${env}', '${interpreter}', train.py, '${args}']\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_file_is_one_clear_line_and_nonzero(case, tmp_path, capsys):
    path = tmp_path / f"{case}.yaml"
    path.write_text(BAD[case])
    assert cli(["sweep", str(path), "--dry-run", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "pwned").exists()


def test_foreign_command_runs_only_when_allowed(tmp_path, capsys):
    path = tmp_path / "foreign.yaml"
    path.write_text(BAD["foreign_command"] + "program: train.py\n")
    assert sweep_main([str(path), "--dry-run", "--allow-any-command",
                       "--runs-dir", str(tmp_path)]) == 0
    assert "train.py --model.arch=resnet50" in capsys.readouterr().out


@pytest.fixture
def offline_workdir(tmp_path, monkeypatch):
    """A working folder with the repo's configs, W&B offline with all its folders inside."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_local_runner_runs_a_grid_resumes_and_feeds_the_table(offline_workdir, capsys):
    write_sweep("tiny.yaml", "tiny", ["resnext11_1x4d", "resnext11_2x4d", "no_such_net"],
                TINY_FIT)
    state_path = Path("runs/sweeps/tiny/state.json")
    records = training_records

    def state():
        return {r["params"]["model.arch"]: r for r in json.loads(state_path.read_text())
                ["runs"].values()}

    assert sweep_main(["tiny.yaml", "--count", "1"]) == 0   # first point only
    assert [r["status"] for r in state().values()] == ["finished", "pending", "pending"]
    assert len(records()) == 1

    # Resumed, two at a time: the other two; the unknown arch fails.
    assert sweep_main(["tiny.yaml", "--parallel", "2"]) == 1
    runs = state()
    assert runs["resnext11_1x4d"]["attempts"] == 1  # not run again
    assert runs["resnext11_2x4d"]["status"] == "finished"
    assert runs["no_such_net"]["status"] == "failed" and runs["no_such_net"]["returncode"] == 2
    assert len(records()) == 2
    for arch in ("resnext11_1x4d", "resnext11_2x4d"):
        record = json.loads(Path(runs[arch]["results"]).read_text())
        assert record["status"] == "finished" and record["arch"] == arch
        assert Path(runs[arch]["wandb_dir"]).is_dir()  # a real offline W&B run
        assert "--model.arch=" + arch in runs[arch]["argv"]

    failed_id = runs["no_such_net"]["run_id"]
    assert sweep_main(["tiny.yaml"]) == 1  # only the failed run is tried again, as a new run
    runs = state()
    assert runs["no_such_net"]["attempts"] == 2 and runs["resnext11_2x4d"]["attempts"] == 1
    assert runs["no_such_net"]["run_id"] != failed_id
    assert len(records()) == 2
    out = capsys.readouterr().out
    assert "3 runs, 2 finished, 1 to run now" in out and "wandb sync" in out

    assert table_main(["--runs", "runs/sweeps/tiny", "--out", "tables"]) == 0
    text = Path("tables/tables.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
            if line.startswith("| resnext11") or line.startswith("| no_such_net")}
    assert set(rows) == {"resnext11_1x4d", "resnext11_2x4d", "no_such_net"}
    assert rows["resnext11_1x4d"].split(" | ")[1:3] == ["11", "1x4d"]  # depth, C x d
    assert rows["resnext11_2x4d"].split(" | ")[1:3] == ["11", "2x4d"]
    assert "- (failed)" in rows["no_such_net"]
    pngs = list(Path("tables").glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    # The demo's claim ends the output (as `make demo-sweep`'s): one seed a network, no interval.
    (claim,) = [line for line in text.splitlines() if line.startswith("| digits (CPU demo)")]
    assert "**not run**" in claim and "one run of digits: resnext11_1x4d 1x4d depth 11" in claim


def test_gpu_slots_share_the_visible_gpus(monkeypatch):
    gpus = [str(i) for i in range(8)]
    assert gpu_slots(4, None, gpus) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert gpu_slots(2, 3, gpus) == [["0", "1", "2"], ["3", "4", "5"]]  # 6, 7 stay idle
    assert gpu_slots(2, None, []) == [None, None]  # the CPU: just two processes
    for parallel, per_run, gpus_, message in [(3, None, gpus, "does not divide the 8"),
                                              (4, 3, gpus, "needs 12 GPUs; 8 are visible"),
                                              (1, 1, [], "no GPU is visible")]:
        with pytest.raises(ValueError, match=message):
            gpu_slots(parallel, per_run, gpus_)
    for visible, expected in [("3,5", ["3", "5"]), ("GPU-1a2b,GPU-3c4d", ["GPU-1a2b", "GPU-3c4d"]),
                              ("", []), ("-1", []), ("0,-1,2", ["0"])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert visible_gpus() == expected


@pytest.mark.parametrize("flags, visible, message", [
    (["--parallel", "0"], None, "--parallel must be at least 1"),
    (["--devices-per-run", "0"], None, "--devices-per-run must be at least 1"),
    (["--parallel", "3"], "0,1", "--parallel 3 does not divide the 2 visible GPUs (0,1)"),
    (["--parallel", "2", "--devices-per-run", "2"], "0,1", "needs 4 GPUs; 2 are visible"),
    (["--devices-per-run", "1"], "", "--devices-per-run 1: no GPU is visible"),
    (["--stop-timeout", "-1"], None, "--stop-timeout must be 0 or more"),
])
def test_bad_parallel_flags_are_one_clear_line(flags, visible, message, tmp_path, monkeypatch,
                                               capsys):
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    write_sweep(tmp_path / "s.yaml", "s", ["resnet50"], [])
    assert cli(["sweep", str(tmp_path / "s.yaml"), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_dry_run_shows_the_gpu_slices_and_a_second_runner_is_refused(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.chdir(tmp_path)  # had the lock failed, the runs would fail here (no configs/)
    write_sweep("s.yaml", "s", ["resnet50", "resnet101"], [])
    argv = ["sweep", "s.yaml", "--runs-dir", str(tmp_path), "--parallel", "2"]
    assert cli([*argv, "--dry-run"]) == 0
    assert "2 at a time (CUDA_VISIBLE_DEVICES 0,1 | 2,3)" in capsys.readouterr().out
    lock = tmp_path / "sweeps" / "s" / ".lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:  # as a runner of this sweep in another process holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep s is being run by another runner" in err[0], err
    assert not (tmp_path / "sweeps" / "s" / "state.json").exists()


@pytest.mark.slow
def test_parallel_runs_overlap_and_stop_on_ctrl_c(offline_workdir, monkeypatch, capsys):
    """--parallel 2: both runs train at once, each on its own (made-up) GPU id; SIGINT to the
    runner stops both (interrupted, last.ckpt saved, no process left, exit 130), and the next
    run of the sweep would retry them. (A parallel resume that skips finished runs: the test
    above.)"""
    # The demo recipe trains on the CPU whatever the ids; its runs must see one each.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    write_sweep("par.yaml", "par", ["resnext11_1x4d", "resnext11_2x4d"],
                [*TINY_FIT, "--trainer.max_epochs=100000"])  # trains until stopped
    state_path = Path("runs/sweeps/par/state.json")

    def state():
        return {r["params"]["model.arch"]: r for r in json.loads(state_path.read_text())
                ["runs"].values()}

    def statuses(paths):
        return [json.loads(p.read_text())["status"] for p in paths]

    runner = subprocess.Popen([sys.executable, "-m", "resnext_lit", "sweep", "par.yaml",
                               "--parallel", "2"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_enabled)
    try:
        deadline = time.monotonic() + 300  # two start-ups on a busy 2-core machine
        while statuses(training_records()) != ["running", "running"]:
            assert runner.poll() is None, runner.communicate()[0]
            assert time.monotonic() < deadline, "the two runs did not both start training"
            time.sleep(0.5)
        # Both records say "running" (written as training starts) at this moment, and both end
        # "interrupted" by the one SIGINT below: the two runs overlapped in time.
        running = state()
        pids = [r["pid"] for r in running.values()]
        assert [r["status"] for r in running.values()] == ["running", "running"]
        runner.send_signal(signal.SIGINT)
        out = runner.communicate(timeout=600)[0]
    except BaseException:  # a failed assertion must not leave the runner or its runs training
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=30)
        for run in state().values() if state_path.exists() else []:
            with suppress(ProcessLookupError, KeyError):
                os.killpg(run["pid"], signal.SIGKILL)
        raise
    assert runner.returncode == 130, out
    assert out.count(": new run ") == 2 and "SIGINT: stopping 2 run(s)" in out, out
    runs = state()
    assert {r["env"]["CUDA_VISIBLE_DEVICES"] for r in runs.values()} == {"7", "9"}
    first, second = sorted(runs.values(), key=lambda r: r["started"])
    assert second["started"] < first["ended"]
    for pid in pids:  # nothing of either run is left: their process groups are empty
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    for arch, run in runs.items():
        assert run["status"] == "interrupted" and run["returncode"] == 128 + signal.SIGTERM
        record = json.loads(Path(run["results"]).read_text())
        assert record["status"] == "interrupted" and record["arch"] == arch
        assert record["stop_reason"].startswith("stopped by SIGTERM")
        assert Path(run["results"]) == \
            Path(f"runs/sweeps/par/{run['folder']}/{run['run_id']}/results.json")
        assert (Path(run["results"]).parent / "checkpoints" / "last.ckpt").is_file()

    assert sweep_main(["par.yaml", "--parallel", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 finished, 2 to run now" in out and out.count(": run\n") == 2, out


@pytest.mark.slow
def test_an_interrupted_point_resumes_its_own_run_when_the_sweep_runs_again(offline_workdir,
                                                                           monkeypatch, capsys):
    """Ctrl-C while the run waits at step 1 (`helpers.PauseAtStep`): the run saves last.ckpt;
    the sweep run again resumes that run (same id, folder, W&B run) instead of starting over."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{TESTS}")
    write_sweep("re.yaml", "re", ["resnext11_2x4d"],
                [*TINY_FIT, "--trainer.callbacks+=helpers.PauseAtStep",
                 "--trainer.callbacks.step=1"])
    runner = subprocess.Popen([sys.executable, "-m", "resnext_lit", "sweep", "re.yaml"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=ctrl_c_enabled)
    try:
        deadline = time.monotonic() + 300
        while not Path("ready").exists():
            assert runner.poll() is None, runner.communicate()[0]
            assert time.monotonic() < deadline, "the run never reached step 1"
            time.sleep(0.2)
        runner.send_signal(signal.SIGINT)
        # Let the run go on only once the runner has passed the SIGTERM on (it acts between
        # polls), so the run is stopped at step 1, not after it has finished.
        for line in iter(runner.stdout.readline, ""):
            if "SIGINT: stopping 1 run(s)" in line:
                break
        else:
            raise AssertionError("the runner ended without passing the signal on")
        Path("go").touch()
        out = runner.communicate(timeout=600)[0]
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 130, out
    assert "interrupted runs resume from their last.ckpt" in out
    state_path = Path("runs/sweeps/re/state.json")
    (first,) = json.loads(state_path.read_text())["runs"].values()
    assert first["status"] == "interrupted"
    folder = Path(f"runs/sweeps/re/{first['folder']}/{first['run_id']}")
    assert json.loads((folder / "results.json").read_text())["status"] == "interrupted"

    assert sweep_main(["re.yaml"]) == 0
    (again,) = json.loads(state_path.read_text())["runs"].values()
    assert f"resuming run {first['run_id']} from its last.ckpt" in capsys.readouterr().out
    assert again["run_id"] == first["run_id"] and again["attempts"] == 2
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "finished" and [e["step"] for e in record["epochs"]] == [2]
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, "output.log"])
    assert len(list(folder.glob("wandb/offline-run-*"))) == 2  # two pieces of one W&B run
    assert {p.name[-8:] for p in folder.glob("wandb/offline-run-*")} == {first["run_id"]}
