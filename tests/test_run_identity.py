"""A run is one run: one id, one folder, one record, one W&B run, from its first start to its
last resume, and nothing of another run is ever touched.

    .venv/bin/python -m pytest -q tests/test_run_identity.py

Real `python -m resnext_lit fit` subprocesses on the digits demo (a tiny network, 3 steps per
epoch, CPU), stopped by real signals at a known step (`helpers.run_signalled`). SLURM and the
W&B agent are the environment they hand a run (set here by hand: the real cluster is
tests/test_slurm.py's).
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resnext_lit.run_identity import ID_ALPHABET, choose_run, new_run_id, setting_of

from helpers import ROOT, run_env, run_signalled, wandb_records

DEMO = str(ROOT / "configs" / "demo.yaml")
WANDB = str(ROOT / "configs" / "logger" / "wandb.yaml")
STEPS, EPOCHS = 3, 2
RUN = ["fit", "--config", DEMO, "--model.cardinality=2", "--model.bottleneck_width=2",
       "--model.warmup_epochs=0", "--trainer.enable_progress_bar=false",
       f"--trainer.max_epochs={EPOCHS}", f"--trainer.limit_train_batches={STEPS}",
       "--trainer.limit_val_batches=1", "--data.init_args.batch_size=32"]
TIMEOUT_S = 600


def fit(cwd: Path, *args, env=None, base=RUN) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnext_lit", *base, *args], cwd=cwd,
                          text=True, capture_output=True, timeout=TIMEOUT_S,
                          env=env or run_env(cwd))


def stopped(cwd: Path, step: int, *args, env=None, base=RUN) -> subprocess.CompletedProcess:
    out = run_signalled([*base, *args], cwd, step, signal.SIGTERM, env)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    return out


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def refused(out: subprocess.CompletedProcess) -> str:
    """The one error line of a command refused before it started (exit 2)."""
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    return line


def runs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def record(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics_rows(folder: Path) -> list[tuple[int, str]]:
    """(step, which metrics) of each metrics.csv row."""
    with open(folder / "metrics.csv", newline="") as file:
        return [(int(row["step"]), ",".join(sorted(k for k, v in row.items() if v)))
                for row in csv.DictReader(file)]


# -- the rules, without training ---------------------------------------------------------------
SETTING = setting_of({"arch": "resnext11_8x4d"}, "x.DigitsDataModule", "demo", 0)


def test_a_new_run_gets_a_fresh_id_and_validate_never_continues_a_run(tmp_path):
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 8 and set(i) <= set(ID_ALPHABET) for i in ids)
    run = choose_run("fit", tmp_path, "demo", SETTING, None, None)
    assert run.folder == tmp_path / "demo" / run.id and run.resume_from is None
    (run.folder / "checkpoints").mkdir(parents=True)
    (run.folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    check = choose_run("validate", tmp_path, "demo", SETTING, None, "last")
    assert check.id != run.id and check.resume_from is None


def test_nothing_of_that_name_starts_fresh_and_settings_name_their_difference(tmp_path):
    run = choose_run("fit", tmp_path, "demo", SETTING, None, "last")
    assert run.resume_from is None and "no run of" in run.why
    other = setting_of({"arch": "resnext11_8x4d", "cardinality": 4}, "x.DigitsDataModule",
                       "demo", 1)
    assert other["network"]["cardinality"] == 4 and other["seed"] == 1
    # Another arch name that builds the same network is the same setting.
    assert setting_of({"arch": "resnext11_8x4d"}, None, None, None) == \
        setting_of({"arch": "resnext11_8x4d", "cardinality": 8}, None, None, None)


# -- case 1: two networks under one name, and `--ckpt_path last` ---------------------------------
@pytest.mark.slow  # trains tiny runs (10-40 s on 2 cores)
def test_ckpt_path_last_resumes_the_run_of_this_setting_and_touches_no_other(tmp_path):
    stopped(tmp_path, 2)                                      # C=2, stopped in epoch 0
    ok(fit(tmp_path, "--model.cardinality=4"))                # C=4, newer, finished
    c2, c4 = sorted(runs(tmp_path / "runs/demo"),
                    key=lambda f: record(f)["setting"]["network"]["cardinality"])
    before = snapshot(c4)

    out = ok(fit(tmp_path, "--ckpt_path", "last"))            # the C=2 command
    assert f"run demo/{c2.name}: resuming" in out.stderr
    assert runs(tmp_path / "runs/demo") == sorted([c2, c4])  # no new folder
    assert snapshot(c4) == before
    rec = record(c2)
    assert rec["status"] == "finished" and rec["run"]["id"] == c2.name
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1]

    # A setting no run has: one line naming the difference, and nothing written anywhere.
    before = snapshot(tmp_path / "runs")
    line = refused(fit(tmp_path, "--model.cardinality=8", "--ckpt_path", "last"))
    assert line.startswith("error: --ckpt_path last: no run under runs/demo has this "
                           "command's setting; the newest,"), line
    assert "network.cardinality 8 (run: " in line
    assert snapshot(tmp_path / "runs") == before


# -- case 7: --ckpt_path FILE continues the file's own run; another network is refused --------
@pytest.mark.slow  # trains tiny runs (10-40 s on 2 cores)
def test_ckpt_path_file_continues_its_own_folder_and_history(tmp_path):
    stopped(tmp_path, STEPS + 1)                              # epoch 0 done, stopped in epoch 1
    (run,) = runs(tmp_path / "runs/demo")
    (best,) = (run / "checkpoints").glob("epoch000-*.ckpt")
    before = snapshot(run)
    line = refused(fit(tmp_path, "--model.cardinality=4", "--ckpt_path", str(best)))
    assert line == f"error: --ckpt_path {best} holds another network: cardinality 4 (run: 2)"
    assert snapshot(run) == before

    ok(fit(tmp_path, "--ckpt_path", str(best)))
    assert runs(tmp_path / "runs/demo") == [run]
    rec = record(run)
    assert [(e["epoch"], e["step"]) for e in rec["epochs"]] == [(0, STEPS), (1, 2 * STEPS)]
    assert rec["status"] == "finished"


# -- case 2: a requeued SLURM job, while a run of the same name exists ----------------------
def test_a_requeued_slurm_job_resumes_its_own_run_only(tmp_path, monkeypatch):
    """The rule, on run folders as training leaves them (tests/test_slurm.py runs it on a real
    cluster, with a newer run of the same name beside it)."""
    def run_folder(run_id: str, job: str, setting: dict) -> Path:
        folder = tmp_path / "demo" / run_id
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
        (folder / "results.json").write_text(json.dumps({"slurm_job": job, "setting": setting,
                                                         "run": {"id": run_id}}))
        return folder

    run_folder("mine0001", "100", SETTING)
    run_folder("theirs01", "200", SETTING)  # newer, same name and setting: another job's
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run = choose_run("fit", tmp_path, "demo", SETTING, None, None)
    assert run.id == "mine0001"
    assert run.resume_from == tmp_path / "demo/mine0001/checkpoints/last.ckpt"
    assert run.why == "SLURM job 100 requeued: resuming"
    # The job rerun with another network (an edited script): a new run, the old one left alone.
    other = setting_of({"arch": "resnext11_8x4d", "cardinality": 4}, "x.DigitsDataModule",
                       "demo", 0)
    run = choose_run("fit", tmp_path, "demo", other, None, None)
    assert run.id not in ("mine0001", "theirs01") and run.resume_from is None
    assert "has another setting" in run.why
    # An array task is its own job: <array job>_<task>.
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert choose_run("fit", tmp_path, "demo", SETTING, None, None).resume_from is None
    # Not requeued: a new run even with the same job id.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert choose_run("fit", tmp_path, "demo", SETTING, None, None).resume_from is None


# -- cases 3 and 5: W&B sweep runs, preempted and handed back ------------------------------
def agent(tmp: Path, run_id: str) -> dict:
    return run_env(tmp, WANDB_SWEEP_ID="swp1", WANDB_RUN_ID=run_id)


@pytest.mark.slow  # trains tiny runs (10-40 s on 2 cores)
def test_a_preempted_sweep_run_is_marked_and_resumed_and_another_point_starts_its_own(tmp_path):
    seed0 = [*RUN, "--config", WANDB]
    out = stopped(tmp_path, 2, env=agent(tmp_path, "aaaa1111"), base=seed0)
    folder = tmp_path / "runs/sweeps/swp1/demo/aaaa1111"
    assert record(folder)["status"] == "interrupted"
    (piece,) = folder.glob("wandb/offline-run-*-aaaa1111/run-aaaa1111.wandb")
    kinds = [r.WhichOneof("record_type") for r in wandb_records(piece)]
    assert "preempting" in kinds  # so the sweep controller hands the run out again
    exit_code = [r.exit.exit_code for r in wandb_records(piece) if r.HasField("exit")]
    assert exit_code == [128 + signal.SIGTERM], out.stderr[-2000:]
    before = snapshot(folder)

    # The job requeued with the next grid point (another seed, another W&B run id): its own run.
    ok(fit(tmp_path, "--seed_everything=1", "--trainer.max_epochs=1",
           env=agent(tmp_path, "bbbb2222"), base=seed0))
    assert record(tmp_path / "runs/sweeps/swp1/demo/bbbb2222")["seed"] == 1
    assert snapshot(folder) == before
    # The controller hands the preempted run back (same WANDB_RUN_ID): it resumes.
    out = ok(fit(tmp_path, env=agent(tmp_path, "aaaa1111"), base=seed0))
    assert "run demo/aaaa1111: resuming the preempted sweep run" in out.stderr
    assert record(folder)["status"] == "finished" and record(folder)["seed"] == 0
    # Handed back with another setting (a grid changed under it): refused, untouched.
    before = snapshot(folder)
    line = refused(fit(tmp_path, "--seed_everything=1", env=agent(tmp_path, "aaaa1111"),
                       base=seed0))
    assert "seed 1 (run: 0)" in line and snapshot(folder) == before


# -- cases 4 and 6: one W&B run, one metrics.csv, over the whole run ---------------------
def summary(piece: Path) -> dict:
    values = {}
    for r in wandb_records(piece):
        if r.HasField("summary"):
            values.update({"/".join(u.nested_key) or u.key: u.value_json
                           for u in r.summary.update})
    return values


@pytest.mark.slow  # trains tiny runs (10-40 s on 2 cores)
def test_stopped_twice_is_one_run_in_wandb_and_metrics_csv_holds_it_all(tmp_path):
    """Case 4 (one W&B run, its summary over the whole run) and case 6 (metrics.csv keeps
    every step once), on one run stopped twice, against an uninterrupted one."""
    whole = tmp_path / "whole"
    whole.mkdir()
    ok(fit(whole, "--trainer.max_epochs=3"))
    (reference,) = runs(whole / "runs/demo")

    tmp_path = tmp_path / "pieces"
    tmp_path.mkdir()
    base = [*RUN, "--config", WANDB, "--trainer.max_epochs=3"]
    stopped(tmp_path, 1, base=base)                     # mid-epoch 0, then mid-epoch 1
    (run,) = runs(tmp_path / "runs/demo")
    stopped(tmp_path, STEPS + 1, "--run_id", run.name, base=base)
    ok(fit(tmp_path, "--run_id", run.name, base=base))
    assert runs(tmp_path / "runs/demo") == [run]
    rows = metrics_rows(run)
    assert rows == metrics_rows(reference)  # each step's rows once, in order
    assert sum("val/top1_err" in keys for _, keys in rows) == 3
    assert not list(run.glob("metrics.csv.*"))
    pieces = sorted(run.glob("wandb/offline-run-*"))
    assert len(pieces) == 3 and all(p.name.endswith(f"-{run.name}") for p in pieces)
    assert set(tmp_path.rglob("offline-run-*")) == set(pieces)  # no other W&B run anywhere
    rec = record(run)
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1, 2]
    last = json.loads(summary(next(pieces[-1].glob("*.wandb")))["val/top1_err"])
    assert last["min"] == pytest.approx(rec["best"]["val/top1_err"])
    assert last["last"] == pytest.approx(rec["epochs"][-1]["val/top1_err"])


# -- a mid-epoch resume on another world size ---------------------------------------------------
def test_a_mid_epoch_checkpoint_resumes_on_any_world_size_with_the_same_global_batch():
    """One global order (`resnext_lit.data.order`): step s holds the same images on any number
    of processes, one included (before: refused from or to one process)."""
    from types import SimpleNamespace

    from resnext_lit.errors import UserError
    from resnext_lit.training.resume import ORDER, _check_same_order

    def trainer(world: int, per_device: int, accumulate: int = 1):
        return SimpleNamespace(world_size=world, accumulate_grad_batches=accumulate,
                               datamodule=SimpleNamespace(batch_size=per_device))

    saved = {"epoch": 4, "batches_done": 30, "world_size": 8, "global_batch": 256,
             "accumulate": 1, "per_device_batch": 32, "order": ORDER}
    _check_same_order(saved, trainer(8, 32))     # the same world
    _check_same_order(saved, trainer(4, 64))     # the same images per step ...
    _check_same_order(saved, trainer(1, 256))    # ... on one process too
    _check_same_order({**saved, "batches_done": 0}, trainer(1, 32, 4))  # an epoch's end
    with pytest.raises(UserError, match=r"saved 30 steps into epoch 4 by 8 process\(es\) with "
                                        r"global batch 256 \(accumulating 1\); this run's is "
                                        r"128 \(accumulating 1\)"):
        _check_same_order(saved, trainer(4, 32))   # another global batch: other steps
    with pytest.raises(UserError, match=r"this run's is 256 \(accumulating 2\)"):
        _check_same_order(saved, trainer(4, 32, 2))  # other micro-steps
    with pytest.raises(UserError, match="in an older data order than this version's"):
        _check_same_order({**saved, "order": None}, trainer(8, 32))


@pytest.mark.slow  # trains tiny runs (10-40 s on 2 cores)
def test_a_mid_epoch_checkpoint_is_refused_with_another_global_batch(tmp_path):
    """Any number of processes may continue it (tests/test_exact_resume.py); another global
    batch would give its steps other images."""
    stopped(tmp_path, 2)
    (run,) = runs(tmp_path / "runs/demo")
    before = snapshot(run)
    line = refused(fit(tmp_path, "--run_id", run.name, "--global_batch_size=64"))
    assert ("saved 2 steps into epoch 0 by 1 process(es) with global batch 32 (accumulating 1); "
            "this run's is 64 (accumulating 1)") in line
    assert snapshot(run) == before
