"""CIFARDataModule: read as torchvision reads CIFAR, the paper's augmentation exactly, safe
unpickling, and a real `fit --config configs/cifar_paper.yaml` run.

    .venv/bin/python -m pytest -q tests/test_cifar.py
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100

from resnext_lit.data import CIFAR10_MEAN, CIFAR100_MEAN
from resnext_lit.data.cifar import CIFARDataModule
from resnext_lit.experiments.table import summarize

ROOT = Path(__file__).resolve().parents[1]
PER_FILE = 26  # images per batch file: CIFAR-10 has 5 train files (130: one batch of 128)
FIT = [sys.executable, "-m", "resnext_lit", "fit", "--config",
       str(ROOT / "configs/cifar_paper.yaml"), "--data.init_args.num_workers=0",
       "--model.depth=11", "--model.cardinality=2",
       "--model.bottleneck_width=2", "--trainer.max_epochs=2", "--model.milestones=[1]",
       "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def cifar(cifar_make, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("cifar")
    return {n: cifar_make(root / f"c{n}", n, PER_FILE, seed=n) for n in (10, 100)}


@pytest.mark.parametrize("num_classes, release", [(10, CIFAR10), (100, CIFAR100)])
def test_images_and_labels_are_torchvisions(cifar, monkeypatch, num_classes, release):
    data = CIFARDataModule(str(cifar[num_classes]), num_classes, num_workers=0)
    with pytest.warns(UserWarning, match=f"differs from the official CIFAR-{num_classes} release"):
        data.setup("fit")
    # torchvision refuses files that are not the official release; these are the same format.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)
    for ours, train in ((data.train_set, True), (data.val_set, False)):
        theirs = release(str(cifar[num_classes]), train=train, download=False)
        assert torch.equal(ours.images, torch.from_numpy(theirs.data).permute(0, 3, 1, 2))
        assert ours.labels.tolist() == theirs.targets
    assert len(data.train_set) == PER_FILE * len(release.train_list)
    assert (data.num_classes, data.image_size) == (num_classes, 32)


def _padded_crops(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Every 32x32 window of the zero-padded image, and its mirror: [2 * (2p + 1)^2, 3, 32, 32]."""
    padded = F.pad(image, (padding,) * 4)
    size = image.shape[-1]
    windows = [padded[:, y:y + size, x:x + size] for y in range(2 * padding + 1)
               for x in range(2 * padding + 1)]
    return torch.stack(windows + [w.flip(-1) for w in windows])


def test_train_images_are_the_papers_padded_crops_and_flips(cifar):
    """Sec. 5.3: a 32x32 crop from the image zero-padded to 40x40, and a horizontal flip."""
    data = CIFARDataModule(str(cifar[10]), num_workers=0)
    with pytest.warns(UserWarning):
        data.setup("fit")
    torch.manual_seed(0)
    image = data.train_set.images[3]
    allowed = _padded_crops(image, 4)
    seen = set()
    for _ in range(200):
        out, label = data.train_set[3]
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
        (match,) = torch.nonzero((allowed == out).flatten(1).all(1))[:1].tolist()
        seen.add(match[0])
        assert label == data.train_set.labels[3]
    assert len(seen) > 50  # many offsets and both mirrors are drawn, not one fixed window
    assert any(i >= len(allowed) // 2 for i in seen) and any(i < len(allowed) // 2 for i in seen)
    plain = CIFARDataModule(str(cifar[10]), padding=0, flip=False, num_workers=0)
    with pytest.warns(UserWarning):
        plain.setup("fit")
    assert torch.equal(plain.train_set[3][0], image)
    assert torch.equal(data.val_set[5][0], data.val_set.images[5])  # validation: no augmentation


def test_the_official_release_does_not_warn(cifar, monkeypatch):
    monkeypatch.setattr("resnext_lit.data.cifar.check_integrity", lambda path, md5: True)
    data = CIFARDataModule(str(cifar[10]), num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.setup("validate")


def test_a_pickle_that_runs_code_is_refused_before_it_runs(cifar_make, tmp_path):
    root = cifar_make(tmp_path / "evil", 10, 4)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    data = CIFARDataModule(str(root), num_workers=0)
    with pytest.raises(ValueError, match=r"test_batch is not a CIFAR batch file: refusing to "
                                         r"load posix.system"), pytest.warns(UserWarning):
        data.setup("validate")
    assert not marker.exists()


def test_bad_roots_and_class_counts_fail_at_construction(cifar, tmp_path):
    with pytest.raises(ValueError, match=r"nope/cifar-10-batches-py/data_batch_1 does not exist: "
                                         r"extract cifar-10-python.tar.gz"):
        CIFARDataModule(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"cifar-100-python/train does not exist"):
        CIFARDataModule(str(cifar[10]), num_classes=100)
    with pytest.raises(ValueError, match="data.num_classes must be 10 .* or 100 .*, got 7"):
        CIFARDataModule(str(cifar[10]), num_classes=7)
    truncated = cifar[10] / "cifar-10-batches-py" / "data_batch_1"
    short = tmp_path / "short" / "cifar-10-batches-py"
    short.mkdir(parents=True)
    for f in truncated.parent.iterdir():
        short.joinpath(f.name).write_bytes(f.read_bytes())
    short.joinpath("data_batch_1").write_bytes(truncated.read_bytes()[:500])
    data = CIFARDataModule(str(short.parent), num_workers=0)
    with pytest.raises(ValueError, match="data_batch_1 is not a CIFAR batch file"), \
            pytest.warns(UserWarning):
        data.setup("fit")


def scale(world_size, per_device, global_batch, lr):
    return {"world_size": world_size, "per_device_batch": per_device,
            "accumulate_grad_batches": 1, "global_batch": global_batch, "lr": lr}


# CIFAR-10 runs the recipe as written (global batch 128, lr 0.1, bf16 autocast); the fake
# CIFAR-100 has 26 training images, so it trains at global batch 8 (lr 0.2 x 8 / 256).
@pytest.mark.slow
@pytest.mark.parametrize("num_classes, mean, batch", [(10, CIFAR10_MEAN, None),
                                                       (100, CIFAR100_MEAN, 8)])
def test_cifar_paper_config_trains_and_the_table_sees_cifar(cifar, tmp_path, num_classes, mean,
                                                            batch):
    out = subprocess.run(
        [*FIT, f"--data.init_args.root={cifar[num_classes]}",
         f"--data.init_args.num_classes={num_classes}", "--trainer.limit_train_batches=3",
         *([f"--global_batch_size={batch}"] if batch else [])],
        cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "runs").rglob("results.json")
    record = json.loads(path.read_text())
    assert record["status"] == "finished" and record["model"]["num_classes"] == num_classes
    assert record["scale"] == (scale(1, 128, 128, 0.1) if batch is None
                               else scale(1, 8, 8, 0.2 * 8 / 256))
    line = "scale: 1 process(es) x 128 images x 1 accumulation = global batch 128 (recipe: " \
           "128), lr 0.1, bf16-mixed; BatchNorm sees 128 images per device (paper: 16)"
    assert batch is not None or line in out.stderr, out.stderr[-3000:]
    assert record["dataset"] == summarize(record)["dataset"] == f"cifar{num_classes}"
    assert record["resolution"]["train"] == record["resolution"]["val"] == 32
    assert record["max_epochs"] == 2 and record["stage"] == "fit"
    wrong = record["final"]["val/top1_err"] * PER_FILE / 100  # over the whole test split
    assert abs(wrong - round(wrong)) < 1e-4, wrong
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert tuple(hparams["mean"]) == mean and hparams["num_classes"] == num_classes
    assert len(record["epochs"]) == 2 and np.isfinite(record["epochs"][-1]["val/loss"])


@pytest.mark.slow
def test_ddp_validates_every_test_image_once(cifar_make, tmp_path):
    """2 gloo ranks over an odd test split (27 images: 14 + 13, no padded duplicate): the logged
    error equals one process's error over the whole split with the same weights. The recipe's
    global batch stays the paper's 128 (64 per rank) and its lr 0.1, as on one process."""
    root = cifar_make(tmp_path / "odd", 10, 27)  # 135 training images: one global batch
    out = subprocess.run(
        [*FIT, f"--data.init_args.root={root}", "--trainer.precision=32-true",
         "--trainer.limit_train_batches=2", "--trainer.devices=2", "--trainer.strategy=ddp",
         "--trainer.accelerator=cpu"],
        cwd=tmp_path, text=True, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "runs").rglob("results.json")
    record = json.loads(path.read_text())
    assert record["world_size"] == 2 and record["scale"] == scale(2, 64, 128, 0.1)
    assert out.stderr.count("scale: 2 process(es) x 64 images") == 1, out.stderr[-3000:]
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    groups = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"]
    assert {g["initial_lr"] for g in groups} == {0.1}  # the optimiser's lr, not just the record
    from lightning import Trainer

    from resnext_lit.training.module import ResNeXtModule

    module = ResNeXtModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="differs from the official"):
        (metrics,) = Trainer(accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False).validate(
            module, CIFARDataModule(str(root), batch_size=4, num_workers=0), verbose=False)
    for name in ("val/top1_err", "val/top5_err"):  # top-5 moves even when top-1 is 100%
        assert metrics[name] == pytest.approx(record["final"][name], abs=1e-4), name
        assert round(record["final"][name] * 27 / 100, 4).is_integer(), record["final"]


def test_a_copy_with_bytes_keys_reads_and_a_missing_entry_is_named(cifar_make, tmp_path):
    """A release re-pickled after `pickle.load(f, encoding="bytes")` has b"data" keys: read as
    the release. A file without the labels names the missing entry."""
    from resnext_lit.data.cifar import read_batch

    root = cifar_make(tmp_path / "bytes", 10, 4) / "cifar-10-batches-py"
    path = root / "test_batch"
    data, labels = read_batch(path, "labels")
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in raw.items()}))
    again = read_batch(path, "labels")
    assert np.array_equal(again[0], data) and np.array_equal(again[1], labels)
    path.write_bytes(pickle.dumps({"data": raw["data"]}))
    with pytest.raises(ValueError, match=r"test_batch is not a CIFAR batch file: it has no "
                                         r"'labels' entry"):
        read_batch(path, "labels")
