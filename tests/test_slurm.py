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
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, available

from helpers import ROOT, TESTS, run_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(available() is not None, reason=str(available()))]
STEPS, EPOCHS = 3, 2
CPU = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]  # sbatch's own overrides
DEMO = ["--config", "configs/demo.yaml",
        "--trainer.accelerator=cpu", "--model.cardinality=2", "--model.bottleneck_width=2",
        "--model.warmup_epochs=0", f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={STEPS}", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--global_batch_size=64"]


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


def test_usr1_requeues_the_job_and_it_resumes_its_own_run_beside_another(cluster, checkout):
    """Two jobs of one run name. Job B finished; job A, paused at step 2, gets `scancel
    --signal=USR1`: it saves at that step, requeues itself, and its second attempt
    resumes A's run (not B's, the newer one), appending to the same log. B's files stay
    byte-identical."""
    one = [*CPU, "--nodes=1", "--ntasks-per-node=1", "--export=ALL,MASTER_ADDR=127.0.0.1",
           "scripts/slurm_train.sbatch", *DEMO, "--trainer.devices=1"]
    other = cluster.sbatch(one, checkout, env(checkout))
    assert cluster.wait(other, "COMPLETED", "FAILED", timeout=300)["JobState"] == "COMPLETED"
    (theirs,) = runs(checkout)
    before = snapshot(theirs)

    job = cluster.sbatch([*one, "--trainer.callbacks+=helpers.PauseAtStep",
                          "--trainer.callbacks.step=2"], checkout, env(checkout))
    deadline = time.monotonic() + 300
    while not (checkout / "ready").exists():
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), log(checkout, job)
        assert time.monotonic() < deadline, "job A never reached step 2"
        time.sleep(0.5)
    assert cluster.run("scancel", "--signal=USR1", job).returncode == 0
    (checkout / "go").touch()
    info = cluster.wait(job, "COMPLETED", "FAILED", "CANCELLED", timeout=400)
    text = log(checkout, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]
    assert "attempt 1 on" in text and "attempt 2 on" in text  # one log, both attempts
    assert "stopped by SIGUSR1 at epoch 0, step 2: saved runs/imagenet_paper/" in text
    assert f"requeued SLURM job {job}; it resumes from there" in text
    mine = next(r for r in runs(checkout) if r != theirs)
    assert f"run imagenet_paper/{mine.name}: SLURM job {job} requeued: resuming" in text
    assert len(runs(checkout)) == 2 and snapshot(theirs) == before
    rec = record(mine)
    assert rec["status"] == "finished" and rec["slurm_job"] == job
    assert [e["epoch"] for e in rec["epochs"]] == list(range(EPOCHS))
