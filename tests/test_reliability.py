"""Preemption, exact resume, atomic checkpoints, non-finite losses, W&B after a crash.

    .venv/bin/python -m pytest -q tests/test_reliability.py

Every run is a real `python -m resnext_lit fit` subprocess on the embedded digits (tiny model,
6 steps per epoch, CPU, deterministic). Signals are real: the test process sends them while the
run waits at a known step (`helpers.PauseAtStep`, loaded by the run through PYTHONPATH), so where
they land is exact and the test never races the training.
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback

from resnext_lit.training.checkpoints import AtomicCheckpointIO, check_checkpoint, unreadable
from resnext_lit.training.nonfinite import NonFiniteError

from helpers import run_env, run_signalled, wandb_records

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
STEPS_PER_EPOCH, EPOCHS = 6, 3
RUN = ["fit", "--config", DEMO, "--model.depth=11", "--model.cardinality=2",
       "--model.bottleneck_width=2", "--data.init_args.image_size=16", "--model.warmup_epochs=0",
       "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={EPOCHS}",
       f"--trainer.limit_train_batches={STEPS_PER_EPOCH}", "--trainer.limit_val_batches=2",
       "--model.ema_decay=0.9", "--trainer.deterministic=true"]
EXACT = 1e-6  # CPU, one thread order, same seeds: resumed and uninterrupted runs agree bit for
#               bit in practice; this leaves room for a float printed and parsed back
TIMEOUT_S = 600


# -- hooks the training subprocesses load (`--trainer.callbacks+=test_reliability.X`) ---------
class NaNAt(Callback):
    """Poison the run at `step`: NaN logits for that one step ("loss"), one inf pixel in that
    step's batch ("pixel": BatchNorm's forward sees it; `skip.json` then says whether the step
    left the module's tensors and the optimiser's state as they were), or NaN in a weight just
    before the epoch's validation and checkpoint ("weights")."""

    def __init__(self, step: int, what: str = "loss"):
        self.step, self.what = step, what
        self.before = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.what == "loss" and trainer.global_step == self.step:
            def once(module, inputs, output):
                handle.remove()
                return output * float("nan")
            handle = pl_module.model.fc.register_forward_hook(once)
        if self.what == "pixel" and trainer.global_step == self.step:
            self.before = (batch_idx, copy.deepcopy(pl_module.state_dict()),
                           copy.deepcopy(trainer.optimizers[0].state_dict()["state"]))
            batch[0][0, 0, 0, 0] = float("inf")  # normalised already: the model's input

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is None or self.before[0] != batch_idx:
            return
        _, module, optimizer = self.before
        after = trainer.optimizers[0].state_dict()["state"]
        Path("skip.json").write_text(json.dumps({
            "changed": [k for k, v in pl_module.state_dict().items()
                        if not torch.equal(v, module[k])],
            "optimizer_changed": [i for i in optimizer if not all(
                torch.equal(v, after[i][k]) for k, v in optimizer[i].items())],
            "optimizer_states": len(optimizer)}))
        self.before = None

    def on_validation_start(self, trainer, pl_module):
        if self.what == "weights" and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.fc.weight[0, 0] = float("nan")


class SigtermAtExit(Callback):
    """Sends this process SIGTERM when the interpreter exits, after every teardown."""

    def __init__(self):
        atexit.register(os.kill, os.getpid(), signal.SIGTERM)


# -- helpers -----------------------------------------------------------------------------------
def fit(cwd: Path, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnext_lit", *RUN, *args], cwd=cwd, text=True,
                          capture_output=True, timeout=TIMEOUT_S, env=env or run_env(cwd))


def fit_signalled(cwd: Path, step: int, sig: int, *args, env=None) -> subprocess.CompletedProcess:
    """The run, sent `sig` from this process while it waits at `step`."""
    return run_signalled([*RUN, *args], cwd, step, sig, env)


def run_dir(cwd: Path) -> Path:
    """The one run folder (runs/demo/<run id>): resumes continue it, never start another."""
    (folder,) = (cwd / "runs" / "demo").iterdir()
    return folder


def record(cwd: Path) -> dict:
    return json.loads((run_dir(cwd) / "results.json").read_text())


def last_ckpt(cwd: Path) -> dict:
    return torch.load(run_dir(cwd) / "checkpoints" / "last.ckpt", weights_only=True)


def all_finite(ckpt: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())


def errors(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def assert_same_training(a: Path, b: Path) -> None:
    """Same epochs, steps, lrs, val metrics, weights, EMA weights and optimiser momentum."""
    ra, rb = record(a), record(b)
    assert ra["status"] == rb["status"] == "finished"
    assert [(e["epoch"], e["step"]) for e in ra["epochs"]] == \
        [(e["epoch"], e["step"]) for e in rb["epochs"]]
    for ea, eb in zip(ra["epochs"], rb["epochs"]):
        for key in ("lr", "val/loss", "val/top1_err", "val/top5_err"):
            assert eb[key] == pytest.approx(ea[key], abs=EXACT), (ea["epoch"], key)
    ca, cb = last_ckpt(a), last_ckpt(b)
    assert ca["global_step"] == cb["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert any(k.startswith("ema.") for k in ca["state_dict"])
    for key, value in ca["state_dict"].items():
        assert torch.allclose(value.double(), cb["state_dict"][key].double(), atol=EXACT), key
    for sa, sb in zip(ca["optimizer_states"][0]["state"].values(),
                      cb["optimizer_states"][0]["state"].values()):
        assert torch.allclose(sa["momentum_buffer"], sb["momentum_buffer"], atol=EXACT)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    out = fit(cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


# -- preemption and exact resume -------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_is_exact(tmp_path, uninterrupted):
    # The signal arrives as step 3 ends: the run saves there and stops inside epoch 0.
    out = fit_signalled(tmp_path, 3, signal.SIGTERM)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    run_id = run_dir(tmp_path).name
    path = Path(f"runs/demo/{run_id}/checkpoints/last.ckpt")
    assert last == (f"stopped by SIGTERM at epoch 0, step 3: saved {path}; resume with the "
                    f"same command plus --run_id {run_id}"), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    rec = record(tmp_path)
    assert rec["status"] == "interrupted" and rec["stop_reason"] == last and rec["epochs"] == []
    ckpt = last_ckpt(tmp_path)  # weights_only=True: our checkpoints need no pickled objects
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 3
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file of `atomic_write` is left

    resumed = fit(tmp_path, "--run_id", run_id)  # as the stop line says
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_dir(tmp_path).name == run_id  # continued in place
    assert sorted(p.name for p in (run_dir(tmp_path) / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert_same_training(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigterm_to_the_run_its_loader_workers_and_wandb_still_saves_and_closes(tmp_path):
    """As `scontrol requeue` signals a SLURM job step: SIGTERM to every process at once, the
    DataLoader workers and W&B's service process (wandb-core) included. The workers ignore it
    (`data.workers.shield_from_stop_signals`); the run saves at the signal and exits 143 (a
    worker dying of it used to fail the run). wandb-core dies of it, unflushed: the run is
    reopened under its id and closed with exit code 143 (`wandb_access.close_run`)."""
    out = run_signalled([*RUN, "--data.init_args.num_workers=2", "--config",
                         str(ROOT / "configs/logger/wandb.yaml")], tmp_path, 3, signal.SIGTERM,
                        to_step=True)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "killed by signal" not in out.stderr
    assert record(tmp_path)["status"] == "interrupted"
    assert last_ckpt(tmp_path)["global_step"] == 3
    run = run_dir(tmp_path)
    assert f"W&B run {run.name} reopened to record exit code 143" in out.stderr
    exits = [r.exit.exit_code for piece in run.glob("wandb/offline-run-*/*.wandb")
             for r in wandb_records(piece) if r.HasField("exit")]
    assert exits == [128 + signal.SIGTERM], out.stderr[-3000:]
    assert {p.name.rsplit("-", 1)[1] for p in run.glob("wandb/offline-run-*")} == {run.name}


@pytest.mark.slow
def test_sigusr1_in_an_epochs_last_step_stops_at_the_epoch_boundary(tmp_path, uninterrupted):
    """Step 6 is epoch 0's last: the run validates, records epoch 0, and stops before epoch 1.
    A SIGTERM at the very end of the process (SLURM's, after the requeue) changes nothing: the
    exit status is still SIGUSR1's (Lightning's teardown had put the stop handler back, which
    then passed the SIGTERM on and killed the process when it came late)."""
    out = fit_signalled(tmp_path, STEPS_PER_EPOCH, signal.SIGUSR1,
                        "--trainer.callbacks+=test_reliability.SigtermAtExit")
    assert out.returncode == 128 + signal.SIGUSR1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("stopped by SIGUSR1 at epoch 1, step 6")
    rec = record(tmp_path)
    assert rec["status"] == "interrupted"
    assert [(e["epoch"], e["step"]) for e in rec["epochs"]] == [(0, 6)]
    assert "val/top1_err" in rec["epochs"][0]  # the validation ran to the end
    assert last_ckpt(tmp_path)["global_step"] == 6

    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, tmp_path)


# -- non-finite losses -------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_loss_stops_with_one_line_and_keeps_the_good_checkpoint(tmp_path):
    out = fit(tmp_path, "--trainer.callbacks+=test_reliability.NaNAt", "--trainer.callbacks.step=8")
    assert out.returncode == 1, out.stderr[-3000:]
    assert errors(out) == [errors(out)[-1]] and "Traceback" not in out.stderr
    lr = 0.1 * 0.5 * (1 + math.cos(math.pi * 8 / (EPOCHS * STEPS_PER_EPOCH)))  # demo: cosine
    assert errors(out)[-1].startswith(
        f"error: nan training loss at step 8 (epoch 1, batch 2) with lr {lr:.4g}; stopped before "
        "any checkpoint saw it"), out.stderr[-3000:]
    # Read at epoch 1's last step (the check is sync-free in between): the line says so.
    assert "(losses are read every 50 steps: this check covered steps 6-11)" in errors(out)[-1]
    rec = record(tmp_path)
    assert rec["status"] == "failed" and rec["stop_reason"].startswith("nan training loss")
    ckpt = last_ckpt(tmp_path)
    assert ckpt["global_step"] == STEPS_PER_EPOCH  # epoch 0's, untouched
    assert all_finite(ckpt)


@pytest.mark.slow
def test_nan_weights_never_reach_a_checkpoint(tmp_path):
    out = fit(tmp_path, "--trainer.callbacks+=test_reliability.NaNAt",
              "--trainer.callbacks.step=12", "--trainer.callbacks.what=weights")
    assert out.returncode == 1, out.stderr[-3000:]
    assert errors(out)[-1].startswith(
        f"error: refusing to save runs/demo/{run_dir(tmp_path).name}/checkpoints/")
    assert "weight tensors hold NaN or inf (first: model.fc.weight)" in errors(out)[-1]
    assert last_ckpt(tmp_path)["global_step"] == STEPS_PER_EPOCH  # epoch 0's, untouched
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file of `atomic_write` is left


@pytest.mark.slow
def test_an_inf_pixel_skipped_leaves_weights_optimiser_and_batchnorm_as_they_were(tmp_path):
    """One inf pixel at step 8: BatchNorm's forward writes it into the running statistics
    before the loss is seen. `skip` puts them back: the step changes no tensor of the module
    (weights, BN statistics, EMA) and no optimiser state, and the run finishes."""
    out = fit(tmp_path, "--model.nonfinite_loss=skip", "--model.ema_decay=0.9",
              "--trainer.callbacks+=test_reliability.NaNAt", "--trainer.callbacks.step=8",
              "--trainer.callbacks.what=pixel")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped a step: nan training loss at step 8 (epoch 1, batch 2)" in out.stderr
    skipped = json.loads((tmp_path / "skip.json").read_text())
    assert skipped == {"changed": [], "optimizer_changed": [],
                       "optimizer_states": skipped["optimizer_states"]}
    assert skipped["optimizer_states"] > 0  # momentum buffers existed, and stayed
    rec = record(tmp_path)
    assert rec["status"] == "finished"
    assert [e["step"] for e in rec["epochs"]] == [6, 12, 18]  # the skipped step still counts
    ckpt = last_ckpt(tmp_path)
    assert all_finite(ckpt)


@pytest.mark.slow
def test_skip_gives_up_after_21_bad_steps_with_a_line_that_fits_skip(tmp_path):
    """lr 1e12: every loss after the first update is NaN. `skip` gives up at the 21st in a row
    with one line that says the weights are those before them, not 'use skip'."""
    out = fit(tmp_path, "--model.nonfinite_loss=skip", "--model.lr=1e12",
              "--trainer.limit_train_batches=24", "--trainer.max_epochs=1")
    assert out.returncode == 1, out.stderr[-3000:]
    (line,) = errors(out)
    assert "21 skipped steps in a row" in line and "before the first of them" in line, line
    assert "nonfinite_loss" not in line and not list(tmp_path.rglob("*.ckpt"))


# -- checkpoint files --------------------------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (injected)")


def test_atomic_save_leaves_the_old_file_when_a_save_fails(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600
    big = {"state_dict": {"w": torch.zeros(1_000_000)}, "extra": [torch.zeros(10), Unpicklable()]}
    with pytest.raises(RuntimeError, match="injected"):
        io.save_checkpoint(big, path)  # fails half-way through writing
    with pytest.raises(NonFiniteError, match=r"refusing to save .*last\.ckpt: 1 weight tensors "
                                             r"hold NaN or inf \(first: w\)"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 1


def test_json_records_are_written_whole_with_the_umask_permissions(tmp_path):
    """results.json, sidecars and sweep state: a failed write keeps the old file, and a new
    file is readable as the umask allows (a sidecar beside a shared beton), not 0600."""
    from resnext_lit.atomic import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"status": "running"})
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": float("nan"), 1j: "complex keys cannot be JSON"})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unreadable_checkpoints_fail_in_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hparams": argparse_namespace()}, unsafe)
    check_checkpoint(good)
    for path, message in ((truncated, "is not a readable PyTorch checkpoint (truncated or "
                                      "corrupt?)"),
                          (unsafe, "holds Python objects that weights_only loading refuses "
                                   "(Unsupported global: GLOBAL argparse.Namespace)"),
                          (tmp_path / "missing.ckpt", "does not exist")):
        with pytest.raises(ValueError) as err:
            check_checkpoint(path)
        assert str(err.value).startswith(f"checkpoint {path}") and message in str(err.value)
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match=message.split(" (")[0]):
            AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    check_checkpoint(unsafe, weights_only=False)  # the user's explicit opt-out
    assert "weights_only" in unreadable(unsafe, Exception("Weights only load failed"), True)


def argparse_namespace():
    import argparse
    return argparse.Namespace(lr=0.1)


@pytest.mark.slow
def test_checkpoints_load_weights_only_unless_the_user_opts_out(tmp_path, uninterrupted):
    ckpt = last_ckpt(uninterrupted)
    ckpt["note"] = argparse_namespace()  # a pickled object, as older code or other tools made
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(ckpt, unsafe)
    common = ["validate", "--config", DEMO, "--model.depth=11", "--model.cardinality=2",
              "--model.bottleneck_width=2", "--data.init_args.image_size=16",
              "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2",
              f"--ckpt_path={unsafe}"]
    run = dict(cwd=tmp_path, text=True, capture_output=True, timeout=TIMEOUT_S,
               env=run_env(tmp_path))
    out = subprocess.run([sys.executable, "-m", "resnext_lit", *common], **run)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert errors(out) == [f"error: checkpoint {unsafe} holds Python objects that weights_only "
                           "loading refuses (Unsupported global: GLOBAL argparse.Namespace); "
                           "pass --weights_only=false only if you trust where it came from"]
    trusted = subprocess.run([sys.executable, "-m", "resnext_lit", *common,
                              "--weights_only=false"], **run)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert "val/top1_err" in trusted.stdout
    # A validate run leaves its record too (Table 5 reads the 320 px ones): the checkpoint's
    # errors at this val resolution, with the recipe's keys.
    (path,) = (tmp_path / "runs").rglob("results.json")
    record = json.loads(path.read_text())
    assert (record["stage"], record["status"], record["checkpoint"]) == ("validate", "finished",
                                                                       str(unsafe))
    assert record["resolution"]["val"] == 16 and record["dataset"] == "digits"
    assert 0 <= record["final"]["val/top1_err"] <= 100 and record["epochs"] == []


def test_class_names_from_a_sidecar_never_reach_outside_the_image_folder(tmp_path):
    """The writer takes val's classes from the train sidecar (`--classes`): a crafted name like
    "../outside" must not make it read files outside the folder it was given."""
    from PIL import Image

    from resnext_lit.data.beton.write import _plan

    for folder in ("val/ant", "val/bee", "outside"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.png")
    sidecar = tmp_path / "train.beton.json"
    sidecar.write_text(json.dumps({"classes": ["../outside", "ant", "bee", "/etc"]}))
    plan = _plan(tmp_path / "val", str(sidecar), None, None)
    assert plan.classes[0] == "../outside"  # kept as a name (indices must match train's) ...
    assert sorted(label for _, label in plan.samples) == [1, 2]  # ... but read nothing through
    assert all(Path(path).resolve().parent.parent == plan.source.resolve()
               for path, _ in plan.samples)


# -- W&B after a crash -------------------------------------------------------------------------
def wandb_run(cwd: Path) -> tuple[Path, list]:
    (folder,) = run_dir(cwd).glob("wandb/offline-run-*")
    (file,) = folder.glob("run-*.wandb")
    return folder, wandb_records(file)


@pytest.mark.slow
def test_wandb_offline_run_is_complete_after_a_crash(tmp_path):
    out = fit(tmp_path, "--config", str(ROOT / "configs/logger/wandb.yaml"),
              "--trainer.log_every_n_steps=1", "--trainer.callbacks+=test_reliability.NaNAt",
              "--trainer.callbacks.step=8")
    assert out.returncode == 1, out.stderr[-3000:]
    folder, records = wandb_run(tmp_path)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 1  # W&B will show the run as crashed, not running forever
    steps = [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "history"
             for i in r.history.item if "/".join(i.nested_key) == "trainer/global_step"]
    assert max(steps) >= 7  # logged up to the step before the NaN
    config = {u.key for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert {"arch", "cardinality", "params"} <= config
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(folder)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=run_env(tmp_path))
    assert sync.returncode == 0 and "Would sync 1 run" in sync.stdout + sync.stderr
