"""What the exact-resume and fault tests share: a tiny run on the demo's digits (in memory or as
betons), a record of every batch it trained, and its final weights.

    from helpers.resume import TINY, batches, fit_here, final_weights, assert_same_weights

Runs load `RecordBatches` through PYTHONPATH (`--trainer.callbacks+=helpers.resume.RecordBatches`,
in TINY).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from lightning import Callback

from resnext_lit.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO, DEMO_FFCV = str(ROOT / "configs/demo.yaml"), str(ROOT / "configs/data/demo_ffcv.yaml")
STEPS, EPOCHS = 4, 3
TINY = ["--config", DEMO, "--model.depth=11", "--model.cardinality=2",
        "--model.bottleneck_width=2", "--model.warmup_epochs=0",
        "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={STEPS}", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0", "--trainer.callbacks+=helpers.resume.RecordBatches"]
# ffcv-imagenet's low-res-first training, squeezed: 32 px in epoch 0, 64 px from epoch 1.
PROGRESSIVE = ["--trainer.callbacks+=resnext_lit.data.ffcv.ProgressiveResizing",
               "--trainer.callbacks.min_res=32", "--trainer.callbacks.max_res=64",
               "--trainer.callbacks.start_ramp=0", "--trainer.callbacks.end_ramp=1"]


class RecordBatches(Callback):
    """Appends one JSON line per training batch to `batches-rank<R>.jsonl` in the run's folder
    (a resumed run's too: it is the same folder): epoch, batch index, shape, labels, a checksum
    of the pixels and a hash of each image."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        line = {"epoch": trainer.current_epoch, "batch": batch_idx, "shape": list(images.shape),
                "labels": labels.tolist(), "checksum": float(images.double().sum()),
                "images": [hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()[:16]
                           for image in images]}
        with open(Path(trainer.default_root_dir) / f"batches-rank{trainer.global_rank}.jsonl",
                  "a") as f:
            f.write(json.dumps(line) + "\n")


def batches(cwd: Path, rank: int = 0) -> dict[tuple[int, int], dict]:
    """(epoch, batch) -> what rank `rank` of the one run under `cwd` trained on in it."""
    (path,) = cwd.rglob(f"batches-rank{rank}.jsonl")  # in the one run's folder
    seen = {}
    for line in map(json.loads, path.read_text().splitlines()):
        seen[line["epoch"], line["batch"]] = line  # a batch trained again after a resume wins
    return seen


def fit_here(cwd: Path, *args, status: int = 0) -> None:
    """`fit` in this process, its runs (and batch records) under `cwd`; `status`: its exit
    status."""
    assert main(["fit", *args, "--run_root", str(cwd / "runs")]) == status


def final_weights(cwd: Path) -> dict:
    """The state dict of the one run's last.ckpt under `cwd`."""
    (path,) = (cwd / "runs").rglob("last.ckpt")
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Every tensor equal, bit for bit."""
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), \
        [key for key in a if not torch.equal(a[key], b[key])]


def write_digit_betons(root: Path) -> list[str]:
    """The demo's digits as JPEG folders and betons (32 px, as `make demo` writes them), and the
    arguments that train on them."""
    from resnext_lit.data.beton import write_beton
    from resnext_lit.data.digits import export

    export(str(root))
    paths = [str(write_beton(root / split, root / f"{split}.beton", workers=2,
                             progress=False).beton) for split in ("train", "val")]
    return ["--config", DEMO_FFCV, f"--data.init_args.train_path={paths[0]}",
            f"--data.init_args.val_path={paths[1]}", "--data.init_args.batch_size=16",
            "--data.init_args.res=32", "--data.init_args.val_res=32",
            "--data.init_args.num_workers=2"]
