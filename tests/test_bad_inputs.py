"""Every bad input, through the real CLI: one clear line naming the culprit, a non-zero exit, no
traceback, nothing half-written left behind.

    .venv/bin/python -m pytest -q tests/test_bad_inputs.py

One table, one subprocess per row (`python -m resnext_lit ...`, as a user runs it), across the
training CLI, the checkpoint loader, the datamodules, the .beton writer, the sweep runner and the
table builder. The rows share one small prepared dataset (`bad`, built once).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
FFCV = ["--config", str(ROOT / "configs" / "data" / "demo_ffcv.yaml")]
TINY = ["--model.depth=11", "--model.cardinality=2", "--model.bottleneck_width=2",
        "--trainer.enable_progress_bar=false", "--model.warmup_epochs=0"]
OTHER_LINES = 3  # stderr may add a usage line (argparse) or Lightning's "Seed set to 0"
FULL_DISK_BYTES = 200_000  # the simulated disk fills up this far into the .beton
TIMEOUT_S = 300


def _image_folder(root: Path, classes: list[str], per_class: int) -> Path:
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    """Good and broken files for every row: betons, sidecars, checkpoints, YAML, folders."""
    from lightning import Trainer

    from resnext_lit.data.beton import write_beton
    from resnext_lit.data.synthetic import SyntheticDataModule
    from resnext_lit.training.module import ResNeXtModule

    root = tmp_path_factory.mktemp("bad")
    classes = ["ant", "bee", "cat"]
    train = _image_folder(root / "images/train", classes, 8)
    val = _image_folder(root / "images/val", classes, 4)
    val2 = _image_folder(root / "images/val2", classes[:2], 4)
    betons = root / "betons"
    for name, folder in (("train", train), ("val", val), ("val2", val2)):
        write_beton(folder, betons / f"{name}.beton", max_side=24, workers=1, progress=False)
    beton = betons / "train.beton"
    data = beton.read_bytes()
    (betons / "truncated.beton").write_bytes(data[: len(data) // 2])
    shutil.copy(f"{beton}.json", betons / "truncated.beton.json")
    shutil.copy(beton, betons / "foreign.beton")  # with the val split's sidecar
    shutil.copy(betons / "val.beton.json", betons / "foreign.beton.json")
    # A beton of other fields than ours and ffcv-imagenet's (image, label: IntField).
    from ffcv.fields import FloatField, RGBImageField
    from ffcv.writer import DatasetWriter

    DatasetWriter(str(betons / "otherfields.ffcv"), {"image": RGBImageField(),
                                                     "label": FloatField()},
                  num_workers=1).from_indexed_dataset([(np.zeros((8, 8, 3), np.uint8), 0.5)] * 3)

    module = ResNeXtModule("resnext11_8x4d", 10, depth=11, cardinality=2, bottleneck_width=2)
    trainer = Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, SyntheticDataModule(batch_size=4, image_size=16))
    ckpt = root / "good.ckpt"
    trainer.save_checkpoint(ckpt)
    (root / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])

    (root / "misspelled.yaml").write_text("model:\n  cardinalty: 4\n")
    (root / "code.yaml").write_text("model: !!python/object/apply:os.system [echo pwned]\n")
    sweep = dict(name="s", method="grid", metric={"name": "val/top1_err", "goal": "minimize"},
                 parameters={"model.arch": {"values": ["resnext29_2x64d"]}},
                 command=["${env}", "${interpreter}", "-m", "resnext_lit", "fit", "${args}"])
    for name, change in (("method", {"method": "gird"}),
                         ("null", {"parameters": {"model.arch": {"values": [None]}}}),
                         ("command", {"command": ["/bin/sh", "-c", "echo pwned", "${args}"]})):
        (root / f"sweep_{name}.yaml").write_text(json.dumps({**sweep, **change}))
    (root / "sweep_code.yaml").write_text("method: !!python/object/apply:os.system [echo pwned]\n")
    (root / "emptyruns").mkdir()
    (root / "brokenruns/demo/version_0").mkdir(parents=True)
    (root / "brokenruns/demo/version_0/results.json").write_text('{"status": "finis')
    (root / "a_file").write_text("not a folder")
    return {"root": root, "betons": betons, "train": train}


def _full_disk():
    """In the child, before exec: files stop growing at FULL_DISK_BYTES (EFBIG, as a full disk
    gives ENOSPC) instead of the process being killed by SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, FULL_DISK_BYTES))


B = "{betons}"
FIT = ["fit", "--config", DEMO, *TINY]
FIT_FFCV = [*FIT, *FFCV, f"--data.init_args.train_path={B}/train.beton",
            f"--data.init_args.val_path={B}/val.beton"]
WRITE = ["write-beton", "--no-progress", "--workers=1", "--max-side=24"]

# (id, argv, culprit: text(s) the one error line must contain, exit status or None: non-zero)
ROWS = [
    # the training CLI: arguments and config files (a misspelled option, an unknown arch and
    # C = 0 are rows of tests/test_training.py's table, run in-process through the same main)
    ("misspelled key in a config file", [*FIT, "--config", "{root}/misspelled.yaml"],
     "cardinalty", 2),
    ("wrong type", [*FIT, "--model.lr=fast"], '"model.lr"', 2),
    ("d out of range", [*FIT, "--model.bottleneck_width=0"], "bottleneck_width", 2),
    ("unknown command", ["trian", "--config", DEMO], "unknown command 'trian'", 2),
    ("missing config file", ["fit", "--config", "{root}/nope.yaml"], "nope.yaml", 2),
    ("code in a config file", [*FIT, "--config", "{root}/code.yaml"],
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply", 2),
    # checkpoints
    ("truncated checkpoint", ["validate", "--config", DEMO, *TINY,
                              "--ckpt_path={root}/truncated.ckpt"],
     "truncated.ckpt is not a readable PyTorch checkpoint", 2),
    ("missing checkpoint", [*FIT, "--ckpt_path={root}/nope.ckpt"], "nope.ckpt: no such file", 2),
    ("run id", [*FIT, "--run_id=Run/1"], "--run_id 'Run/1': use lower-case letters and digits", 2),
    # the datamodules
    ("missing .beton", [*FIT_FFCV, f"--data.init_args.train_path={B}/nope.beton"],
     "nope.beton does not exist", 2),
    ("truncated .beton", [*FIT_FFCV, f"--data.init_args.train_path={B}/truncated.beton"],
     "truncated.beton is", 2),
    ("sidecar of another write", [*FIT_FFCV, f"--data.init_args.train_path={B}/foreign.beton"],
     ("foreign.beton is", "bytes but its sidecar says"), 2),
    ("beton of other fields", [*FIT_FFCV, f"--data.init_args.train_path={B}/otherfields.ffcv"],
     "otherfields.ffcv has fields", 2),
    ("class-count mismatch", [*FIT_FFCV, f"--data.init_args.val_path={B}/val2.beton"],
     "val2.beton was written with other classes", 2),
    ("cifar: not extracted", ["fit", "--config", str(ROOT / "configs/cifar_paper.yaml"), *TINY,
                              "--data.init_args.root={root}/nope"],
     "nope/cifar-10-batches-py/data_batch_1 does not exist: extract cifar-10-python.tar.gz", 2),
    ("val_res not positive", [*FIT_FFCV, "--data.init_args.val_res=0"], '"data.val_res"', 2),
    # the .beton writer
    ("writer: unwritable output", [*WRITE, "--train={train}", "--out={root}/a_file/out"],
     "cannot write to output folder", 2),
    ("writer: missing input", [*WRITE, "--train={root}/nope", "--out={root}/out_missing"],
     "nope does not exist", 2),
    ("writer: full disk", [*WRITE, "--train={train}", "--write-mode=raw", "--out={root}/out_full"],
     ("writing", "train.beton failed", "[Errno 27] File too large (disk full?)"), 1),
    # the sweep runner (W&B sweep files, run locally)
    ("sweep: bad method", ["sweep", "{root}/sweep_method.yaml", "--dry-run"], "gird", 2),
    ("sweep: null value", ["sweep", "{root}/sweep_null.yaml", "--dry-run"],
     "parameter model.arch has a null value", 2),
    ("sweep: foreign command", ["sweep", "{root}/sweep_command.yaml", "--dry-run"],
     "does not start this project's CLI", 2),
    ("sweep: code in YAML", ["sweep", "{root}/sweep_code.yaml", "--dry-run"],
     "sweep_code.yaml", 2),
    # the table builder
    ("table: empty runs folder", ["table", "--runs={root}/emptyruns", "--out={root}/tables1"],
     "no results.json under", 2),
    ("table: missing runs folder", ["table", "--runs={root}/nope", "--out={root}/tables2"],
     "nope: no such folder", 2),
    ("table: broken results.json", ["table", "--runs={root}/brokenruns", "--out={root}/tables3"],
     "results.json", 2),
]
FULL_DISK_ROW = "writer: full disk"


def test_the_table_covers_every_tool_with_at_least_20_rows():
    assert len(ROWS) >= 20
    commands = {argv[0] for _, argv, _, _ in ROWS}
    assert {"fit", "validate", "write-beton", "sweep", "table"} <= commands


# Rows run as `python -m resnext_lit` subprocesses: the full disk (a file-size limit set in the
# child), one per kind of command line, and one of each tool. The others run the same `main`
# in-process: a second each instead of a Python start-up that imports Lightning.
SUBPROCESS_ROWS = {FULL_DISK_ROW, "unknown command", "misspelled key in a config file",
                   "truncated .beton", "sweep: bad method", "table: empty runs folder"}


def _run(name: str, argv: list[str], cwd, monkeypatch, capfd) -> tuple[int, str]:
    """(exit status, stderr) of one row, as a subprocess or through `main` in-process."""
    if name in SUBPROCESS_ROWS:
        out = subprocess.run(
            [sys.executable, "-m", "resnext_lit", *argv], cwd=cwd, text=True,
            capture_output=True, timeout=TIMEOUT_S,
            preexec_fn=_full_disk if name == FULL_DISK_ROW else None,
            env=dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(cwd)))
        return out.returncode, out.stderr
    from resnext_lit.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(cwd))
    capfd.readouterr()  # only this row's output
    try:
        status = main(argv)
    except SystemExit as stop:  # what `python -m` would have exited with
        status = stop.code
    return status, capfd.readouterr().err


# The rows run as real subprocesses (seconds each) are slow: `make test` runs them.
@pytest.mark.parametrize("name, argv, culprit, status", [
    pytest.param(*row, marks=pytest.mark.slow) if row[0] in SUBPROCESS_ROWS else row
    for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input(bad, tmp_path, monkeypatch, capfd, name, argv, culprit, status):
    paths = {k: str(v) for k, v in bad.items()}
    argv = [a.format(**paths) for a in argv]
    before = _tree(bad["root"])
    code, stderr = _run(name, argv, tmp_path, monkeypatch, capfd)
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert code != 0 and (status is None or code == status), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    culprits = (culprit,) if isinstance(culprit, str) else culprit
    assert len(errors) == 1 and all(c in errors[0] for c in culprits), lines
    assert len(lines) <= 1 + OTHER_LINES, lines
    # Nothing half-written: no run folder, checkpoint, .beton, .partial or table appeared.
    assert not (tmp_path / "runs").exists(), list(tmp_path.rglob("*"))
    assert _tree(bad["root"]) == before, sorted(_tree(bad["root"]) ^ before)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
def test_workers_above_the_cores_warn_and_train(bad, tmp_path):
    """Not an error: the DataModule clips the worker count to the usable cores and says so."""
    out = subprocess.run(
        [sys.executable, "-m", "resnext_lit", "fit", "--config", DEMO, *TINY,
         "--config", str(ROOT / "configs/data/imagenet_folder.yaml"),
         f"--data.init_args.train_dir={bad['train']}", f"--data.init_args.val_dir={bad['train']}",
         "--data.init_args.val_labels=null",
         "--data.init_args.res=16", "--data.init_args.val_res=16", "--data.init_args.batch_size=4",
         "--data.init_args.num_workers=999", "--trainer.fast_dev_run=1"],
        cwd=tmp_path, text=True, capture_output=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    warned = [line for line in out.stderr.splitlines() if "data.num_workers=999" in line]
    assert len(warned) == 1 and "usable cores; using" in warned[0], out.stderr[-3000:]


@pytest.mark.parametrize("datamodule", ["digits.DigitsDataModule", "synthetic.SyntheticDataModule"])
def test_in_memory_datamodules_clip_workers_too(datamodule):
    import importlib

    from resnext_lit.data.workers import usable_cores

    module, name = datamodule.split(".")
    cls = getattr(importlib.import_module(f"resnext_lit.data.{module}"), name)
    with pytest.warns(UserWarning, match="data.num_workers=999 is more than the"):
        data = cls(num_workers=999)
    assert data.num_workers == usable_cores() < 999


@pytest.mark.slow
def test_model_settings_a_checkpoint_overrides_are_named(bad, tmp_path):
    """Lightning builds the model from --ckpt_path's hparams, over the command line: say so."""
    out = subprocess.run([sys.executable, "-m", "resnext_lit", "validate", "--config", DEMO, *TINY,
                          "--model.cardinality=4", f"--ckpt_path={bad['root']}/good.ckpt",
                          "--trainer.limit_val_batches=1"],
                         cwd=tmp_path, text=True, capture_output=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("warning: --ckpt_path")]
    assert "good.ckpt builds the model from its own hyperparameters: model.cardinality=2 " \
        "(not 4), model.lr=0.1 (not 0.4)" in line, line  # good.ckpt: the defaults; demo.yaml: 0.4
    assert "depth" not in line  # depth 11 in both


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_even_via_run_id(bad, tmp_path):
    folder = tmp_path / "runs/demo/abc123/checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(bad["root"] / "truncated.ckpt", folder / "last.ckpt")
    out = subprocess.run([sys.executable, "-m", "resnext_lit", *FIT, "--run_id=abc123"],
                         cwd=tmp_path, text=True, capture_output=True, timeout=TIMEOUT_S)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "error: checkpoint runs/demo/abc123/checkpoints/last.ckpt is not a readable PyTorch "
        "checkpoint (truncated or corrupt?): PytorchStreamReader failed reading zip archive: "
        "failed finding central directory")
    assert torch.load(bad["root"] / "good.ckpt", weights_only=True)["global_step"] == 1
