"""Our own sbatch script on a real SLURM (slurmctld + two node daemons on this host, see
tests/slurm_cluster.py), with command-line overrides only, waiting on real job states.

    .venv/bin/python -m pytest -q tests/test_slurm.py

The jobs run the digits demo on CPU (2 tiny epochs of 3 steps). SLURM holds a requeued job for
~120 s before it may start again; the tests release it at once (`scontrol update
StartTime=now`), as an admin could.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, available

from helpers import ROOT, TESTS, run_env, wandb_records

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(available() is not None, reason=str(available()))]
STEPS, EPOCHS = 3, 2
CPU = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]  # sbatch's own overrides
TINY = ["--trainer.accelerator=cpu", "--model.warmup_epochs=0", f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={STEPS}", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--global_batch_size=64"]
DEMO = ["--config", "configs/demo.yaml", "--model.cardinality=2", "--model.bottleneck_width=2",
        *TINY]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A submit folder as a user's clone looks to the job: configs, scripts and the venv."""
    for name in ("configs", "scripts", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def env(folder: Path, **extra) -> dict:
    return run_env(folder, PYTHONPATH=str(TESTS), **extra)  # helpers.PauseAtStep for the jobs


def log(folder: Path, job: str) -> str:
    (path,) = folder.glob(f"slurm-*-{job}.out")
    return path.read_text()


def runs(folder: Path) -> list[Path]:
    return sorted((folder / "runs" / "imagenet_paper").iterdir())  # the recipe names the run


def record(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_nodes_train_one_ddp_run_from_a_fresh_clone(cluster, checkout):
    """`--nodes 2`, one task each, on the two node daemons: one run of world size 2. Lightning
    takes the first node's name for MASTER_ADDR; n1 does not resolve here, so the job gets
    MASTER_ADDR=127.0.0.1 (on a real cluster node names resolve)."""
    job = cluster.sbatch([*CPU, "--nodes=2", "--ntasks-per-node=1",
                          "--export=ALL,MASTER_ADDR=127.0.0.1", "scripts/slurm_train.sbatch",
                          *DEMO, "--trainer.devices=1"], checkout,
                         env(checkout, MASTER_ADDR="127.0.0.1"))
    info = cluster.wait(job, "COMPLETED", "FAILED", "CANCELLED", timeout=300)
    assert info["JobState"] == "COMPLETED", log(checkout, job)[-3000:]
    (run,) = runs(checkout)
    rec = record(run)
    assert rec["status"] == "finished" and rec["world_size"] == 2, rec
    assert rec["config"]["trainer"]["num_nodes"] == 2 and rec["slurm_job"] == job
    assert [e["epoch"] for e in rec["epochs"]] == list(range(EPOCHS))


def test_a_rendezvous_that_cannot_happen_fails_in_one_line(cluster, checkout):
    """Without MASTER_ADDR, DDP would meet at node n1, which no resolver here knows: torch would
    retry for ever. The job fails at once, its log naming the node and the fix."""
    job = cluster.sbatch([*CPU, "--nodes=1", "--ntasks-per-node=1",
                          "scripts/slurm_train.sbatch", *DEMO, "--trainer.devices=1"],
                         checkout, env(checkout))
    assert cluster.wait(job, "COMPLETED", "FAILED", timeout=120)["JobState"] == "FAILED"
    errors = [line for line in log(checkout, job).splitlines() if line.startswith("error:")]
    assert errors == ["error: SLURM node 'n1', where DDP's ranks would meet (the first of "
                      "SLURM_NODELIST), does not resolve here: give the job MASTER_ADDR=<its "
                      "address> (sbatch --export=ALL,MASTER_ADDR=...)"]
    assert not (checkout / "runs").exists()


VAL = ("val/loss", "val/top1_err", "val/top5_err")


def wait_ready(cluster, checkout: Path, job: str) -> None:
    """Until the job's `PauseAtStep` waits (it wrote `ready`)."""
    deadline = time.monotonic() + 120
    while not (checkout / "ready").exists():
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), log(checkout, job)
        assert time.monotonic() < deadline, f"job {job} never reached its pause: {cluster.job(job)}"
        time.sleep(0.5)


def test_scontrol_requeue_with_loader_workers_resumes_its_own_run_beside_another(
        cluster, checkout):
    """Two jobs of one run name, 2 DataLoader workers each. Job B trains uninterrupted; job A,
    paused at step 2, gets `scontrol requeue`: SIGTERM to every process of its step (the
    workers too). A saves at that step, SLURM requeues it, and its second attempt resumes A's
    run (not B's, the newer one), appending to the same log. B's files stay byte-identical, and
    A's validation numbers equal B's in every epoch."""
    one = [*CPU, "--nodes=1", "--ntasks-per-node=1", "--export=ALL,MASTER_ADDR=127.0.0.1",
           "scripts/slurm_train.sbatch", *DEMO, "--trainer.devices=1",
           "--data.init_args.num_workers=2"]
    other = cluster.sbatch(one, checkout, env(checkout))
    assert cluster.wait(other, "COMPLETED", "FAILED", timeout=300)["JobState"] == "COMPLETED"
    (theirs,) = runs(checkout)
    before = snapshot(theirs)

    job = cluster.sbatch([*one, "--trainer.callbacks+=helpers.PauseAtStep",
                          "--trainer.callbacks.step=2", "--trainer.callbacks.signalled=true"],
                         checkout, env(checkout))
    wait_ready(cluster, checkout, job)
    assert cluster.run("scontrol", "requeue", job).returncode == 0
    (checkout / "go").touch()
    info = cluster.wait(job, "COMPLETED", "FAILED", "CANCELLED", timeout=400)
    text = log(checkout, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]
    assert "attempt 1 on" in text and "attempt 2 on" in text  # one log, both attempts
    assert "killed by signal" not in text  # the workers outlived the SIGTERM
    assert "stopped by SIGTERM at epoch 0, step 2: saved runs/imagenet_paper/" in text
    assert "(a requeued SLURM job does so by itself)" in text
    mine = next(r for r in runs(checkout) if r != theirs)
    assert f"run imagenet_paper/{mine.name}: SLURM job {job} requeued: resuming" in text
    assert len(runs(checkout)) == 2 and snapshot(theirs) == before
    rec = record(mine)
    assert rec["status"] == "finished" and rec["slurm_job"] == job
    assert ([{k: e[k] for k in ("epoch", *VAL)} for e in rec["epochs"]]
            == [{k: e[k] for k in ("epoch", *VAL)} for e in record(theirs)["epochs"]])


def test_a_sweep_as_a_job_array_with_one_point_preempted_and_requeued(cluster, checkout):
    """scripts/slurm_sweep.sbatch, `--array=0-1`: two grid points of the demo sweep at once,
    W&B offline. Point 0, paused at step 2, gets `scancel --signal=USR1`: it saves, closes its
    W&B run with exit code 138 before it requeues its own array task (whose SIGTERM reaches
    W&B's service process), and the requeued task resumes the same run under the same W&B run
    id. Both points finish in the sweep's folder and `table` reads the two."""
    (checkout / "sweeps").symlink_to(ROOT / "sweeps")
    array = cluster.sbatch([*CPU, "--array=0-1", "--ntasks-per-node=1",
                            "--export=ALL,MASTER_ADDR=127.0.0.1", "scripts/slurm_sweep.sbatch",
                            "sweeps/demo_cardinality.yaml", *TINY,
                            "--trainer.callbacks+=helpers.PauseAtStep",
                            "--trainer.callbacks.step=2",
                            "--trainer.callbacks.only_if=SLURM_ARRAY_TASK_ID=0",
                            "--trainer.callbacks.signalled=true"],
                           checkout, env(checkout))
    first, second = f"{array}_0", f"{array}_1"
    wait_ready(cluster, checkout, first)
    assert cluster.run("scancel", "--signal=USR1", first).returncode == 0
    (checkout / "go").touch()
    for task in (first, second):
        info = cluster.wait(task, "COMPLETED", "FAILED", "CANCELLED", timeout=400)
        assert info["JobState"] == "COMPLETED", log(checkout, task)[-3000:]
    assert cluster.job(first)["Restarts"] == "1" and cluster.job(second)["Restarts"] == "0"
    text = log(checkout, first)
    assert "stopped by SIGUSR1 at epoch 0, step 2: saved" in text
    assert f"requeued SLURM job {first}; it resumes from there" in text

    sweep = checkout / "runs" / "sweeps" / "demo-cardinality"
    point = "01-resnext11_1x4d-seed_everything=0"  # the second: its seed 1
    (run,) = (sweep / point).iterdir()
    assert f"run {point}/{run.name}: SLURM job {first} requeued: resuming" in text
    assert [record(r)["status"] for r in sorted(sweep.glob("0*/*"))] == ["finished"] * 2
    assert [e["epoch"] for e in record(run)["epochs"]] == list(range(EPOCHS))
    pieces = sorted(run.glob("wandb/offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in pieces] == [run.name] * 2  # one W&B run id
    exits = [[r.exit.exit_code for r in wandb_records(piece) if r.HasField("exit")]
             for piece in (next(p.glob("*.wandb")) for p in pieces)]
    assert exits == [[128 + signal.SIGUSR1], [0]]
    table = subprocess.run([sys.executable, "-m", "resnext_lit", "table", "--runs", str(sweep),
                            "--out", "tables"], cwd=checkout, env=env(checkout),
                           capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    text = (checkout / "tables" / "tables.md").read_text()
    assert "| resnext11_1x4d | 11 | 1x4d |" in text and "(n=2)" in text, text  # two seeds
