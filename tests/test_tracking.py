"""W&B tracking, all offline and local: `pytest -q tests/test_tracking.py`.

Runs are read back from wandb's own transaction log (`run-<id>.wandb`, decoded with wandb's
protobuf schema), because offline runs write no config.yaml or summary file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import wandb
from lightning.pytorch.utilities import rank_zero_only

from resnext_lit.data.digits import DigitsDataModule
from resnext_lit.training.module import ResNeXtModule
from resnext_lit.training.wandb_logger import WandbLogger, describe_run, run_labels

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex digits: the shape of a real key
TINY_MODEL = dict(arch="resnext29_8x64d", cardinality=2, bottleneck_width=2, schedule="cosine")
TINY_FIT = ["--model.cardinality=2", "--model.bottleneck_width=2", "--model.warmup_epochs=0",
            "--data.init_args.image_size=16", "--data.init_args.batch_size=16",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1"]


def wandb_env(tmp: Path, mode: str | None = "offline") -> dict:
    """Environment with every W&B folder in `tmp`, no credentials and (by default) offline."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("NETRC",)}
    env.update(HOME=str(tmp / "home"), NETRC=str(tmp / "no-netrc"),
               WANDB_DIR=str(tmp / "wandb-dir"), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
               WANDB_DATA_DIR=str(tmp / "wandb-data"), WANDB_ERROR_REPORTING="false")
    if mode:
        env["WANDB_MODE"] = mode
    for key in ("HOME", "WANDB_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Apply `wandb_env` to this process; wandb's global setup is rebuilt around each test."""
    def apply(mode: str | None = "offline", **extra) -> None:
        wandb.teardown()
        for key in [k for k in os.environ if k.startswith("WANDB_") or k == "NETRC"]:
            monkeypatch.delenv(key)
        for key, value in {**wandb_env(tmp_path, mode), **extra}.items():
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    apply()
    yield apply
    wandb.finish()
    wandb.teardown()


def read_run(run_dir: Path) -> dict:
    """Config, tags, group and history of an offline run, from its transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk = 32768, 7, b""   # LevelDB log format: 7-byte headers, 32 KiB blocks
    out = {"config": {}, "tags": [], "group": None, "history": []}
    while pos + 7 <= len(data):
        room = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if room < 7 or kind == 0:
            pos += room
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):   # FIRST/MIDDLE fragments wait for their LAST
            continue
        record = pb.Record()
        record.ParseFromString(chunk)
        chunk = b""
        kind_name = record.WhichOneof("record_type")
        items = []
        if kind_name == "run":
            out["tags"] += list(record.run.tags)
            out["group"] = record.run.run_group or out["group"]
            items = record.run.config.update
        elif kind_name == "config":
            items = record.config.update
        elif kind_name == "history":
            out["history"].append({i.key or ".".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        for item in items:
            out["config"][item.key] = json.loads(item.value_json)
    return out


def one_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if "wandb sync" in line]


def test_run_labels_name_the_setting_not_the_seed():
    group, tags = run_labels("resnext50_32x4d", 50, 32, 4, "c", "imagenet_paper", "imagenet")
    assert group == "imagenet/imagenet_paper/resnext50_32x4d"
    assert tags == ["resnext50_32x4d", "depth50", "32x4d", "form-c", "imagenet_paper",
                    "imagenet"]
    group, tags = run_labels("resnext29_8x64d", 11, 8, 4, "b", "demo")
    assert group == "demo/resnext11_8x4d"
    assert {"depth11", "8x4d", "form-b"} <= set(tags)
    assert run_labels("resnext29_8x64d", 29, 8, 64, "c")[0] == "resnext29_8x64d"
    # Table 7: one network on CIFAR-10 and CIFAR-100 is two settings, never one mean
    assert (run_labels("resnext29_8x64d", 29, 8, 64, "c", "cifar_paper", "cifar10")[0]
            != run_labels("resnext29_8x64d", 29, 8, 64, "c", "cifar_paper", "cifar100")[0])
    # overrides that build a registered network are grouped under its name
    assert run_labels("resnext50_32x4d", 50, 8, 14, "c", "imagenet_paper", "imagenet")[0] == \
        "imagenet/imagenet_paper/resnext50_8x14d"


@pytest.mark.slow
def test_offline_without_credentials_says_so_once_and_logs_everything(isolated, capfd):
    isolated(mode=None)  # no WANDB_MODE: offline must come from the missing credentials
    logger = WandbLogger(save_dir="runs")
    module = ResNeXtModule(**TINY_MODEL, num_classes=10)
    data = DigitsDataModule(batch_size=16, image_size=16)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        log_every_n_steps=1)
    describe_run(trainer, module, data, recipe="demo", config={"seed_everything": 0})
    trainer.fit(module, datamodule=data)
    wandb.finish()
    wandb.teardown()  # the service flushes the transaction log when it shuts down
    err = capfd.readouterr().err
    assert logger.mode == "offline"
    lines = one_line(err)
    assert len(lines) == 1 and "no W&B credentials" in lines[0], err
    assert not [line for line in err.splitlines() if line.startswith("wandb:")], err
    run_dir = Path(lines[0].split("wandb sync ")[1].rstrip("`"))
    assert run_dir.is_dir() and run_dir.parent.resolve() == Path("runs/wandb").resolve()
    run = read_run(run_dir)
    assert run["group"] == "digits/demo/resnext29_8x64d-2x2d"
    assert {"resnext29_8x64d", "depth29", "2x2d", "form-c", "demo", "digits"} <= set(run["tags"])
    config = run["config"]
    assert config["seed_everything"] == 0
    assert config["cardinality"] == 2 and config["bottleneck_width"] == 2
    assert config["depth"] == 29 and config["form"] == "c"  # real values, not hparams' None
    assert config["lr"] == module.hparams.lr  # the module's hparams are logged too
    assert config["params"] == sum(p.numel() for p in module.model.parameters())
    assert config["macs"] > 0 and config["image_size"] == 16
    # the same comparability facts as results.json, so a table from W&B matches one from disk
    assert config["scale"] == {"world_size": 1, "per_device_batch": 16,
                               "accumulate_grad_batches": 1, "global_batch": 16,
                               "lr": module.hparams.lr * 16 / 256}
    assert config["dataset"] == "digits" and config["max_epochs"] == 1
    assert config["resolution"]["train"] == config["resolution"]["val"] == 16
    assert config["versions"]["wandb"] == wandb.__version__ and "cpus" in config["hardware"]
    logged = set().union(*run["history"])
    assert {"train/loss_step", "train/top1_err", "val/loss", "val/top1_err", "val/top5_err",
            "lr", "train/images_per_s", "trainer/global_step"} <= logged, logged


def test_credentials_but_unreachable_server_fall_back_fast(isolated, capfd):
    isolated(mode=None, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL="http://127.0.0.1:9")
    start = time.monotonic()
    logger = WandbLogger(save_dir="runs")
    assert logger.experiment is not None
    assert logger.mode == "offline" and time.monotonic() - start < 30
    lines = one_line(capfd.readouterr().err)
    assert len(lines) == 1 and "not reachable" in lines[0]


@pytest.mark.slow
def test_server_that_accepts_but_never_answers_falls_back_within_30s(isolated, capfd):
    # A listening socket nobody reads: the TCP probe passes, so wandb's own init timeout
    # is what must end the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        isolated(mode=None, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=url)
        start = time.monotonic()
        logger = WandbLogger(save_dir="runs", init_timeout=2, log_model=True)
        logger.experiment.log({"x": 1})
        elapsed = time.monotonic() - start
    assert logger.mode == "offline" and elapsed < 30, elapsed
    assert logger._log_model is False  # nothing to upload to
    lines = one_line(capfd.readouterr().err)
    assert len(lines) == 1 and "wandb.init failed" in lines[0] and "checkpoints" in lines[0]


def test_only_global_rank_zero_starts_a_run(isolated, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = WandbLogger(save_dir="runs")
    logger.log_metrics({"val/top1_err": 50.0}, step=0)
    assert logger.mode is None and "DummyExperiment" in type(logger.experiment).__name__
    assert not Path("runs").exists() and wandb.run is None


def test_disabled_mode_is_silent(isolated, capfd):
    isolated(mode="disabled")
    logger = WandbLogger(save_dir="runs")
    logger.experiment.log({"x": 1})
    assert logger.mode == "disabled" and not one_line(capfd.readouterr().err)


@pytest.mark.slow
def test_cli_fit_with_the_wandb_fragment_makes_a_real_offline_run(tmp_path):
    """`fit --config <recipe> --config configs/logger/wandb.yaml`, as a user types it."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    argv = [sys.executable, "-m", "resnext_lit", "fit", "--config", "configs/demo.yaml",
            "--config", "configs/logger/wandb.yaml", *TINY_FIT]
    env = {**wandb_env(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(one_line(proc.stderr)) == 1, proc.stderr[-3000:]
    [results] = (tmp_path / "runs").rglob("results.json")
    record = json.loads(results.read_text())
    [run_dir] = (results.parent / "wandb").glob("offline-run-*")  # in the run's own folder
    assert run_dir.name.endswith("-" + record["run"]["id"])  # the W&B run's id is the run's
    run = read_run(run_dir)
    config = run["config"]
    assert (config["run_id"], config["run_name"]) == (record["run"]["id"], "demo")
    assert config["arch"] == record["arch"] == "resnext11_8x4d"
    assert config["params"] == record["model"]["params"]
    assert config["macs"] == record["model"]["macs"]
    assert (config["depth"], config["form"]) == (record["model"]["depth"], "c")
    assert {"resnext11_8x4d", "2x2d", f"depth{record['model']['depth']}"} <= set(run["tags"])
    logged = [h for h in run["history"] if "val/top1_err" in h]
    assert logged and logged[-1]["val/top1_err"] == pytest.approx(
        record["final"]["val/top1_err"])
