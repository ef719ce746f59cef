"""`predict` through the real LightningCLI: a tiny checkpoint (or its weights as a file) over the
digits' val split and over a folder of images with a corrupt file, on one process and on two
DDP ranks; the CSV checked row by row against probabilities computed here.

    .venv/bin/python -m pytest -q tests/test_predict.py
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from resnext_lit.cli import main
from resnext_lit.data.digits import CLASSES, digits_uint8, split
from resnext_lit.training.module import ResNeXtModule
from resnext_lit.training.predictions import PredictionWriter

from helpers import ROOT, run_env

DEMO = str(ROOT / "configs" / "demo.yaml")
RES = 16  # the demo's resolution
QUIET = ["--trainer.enable_progress_bar=false"]
NETWORK = ["--model.depth=11", "--model.cardinality=2", "--model.bottleneck_width=2"]
TINY = [*NETWORK, f"--data.init_args.image_size={RES}", "--model.warmup_epochs=0", *QUIET]
GOOD, NESTED = 5, 2  # images at the folder's top and in a sub-folder; one corrupt file besides


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny demo network, trained 3 steps: its checkpoint holds the digits' class names and
    val resolution (`eval_data`)."""
    root = tmp_path_factory.mktemp("fit")
    assert main(["fit", "--config", DEMO, *TINY, "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                 "--run_root", str(root)]) == 0
    (path,) = root.rglob("last.ckpt")
    return path


@pytest.fixture(scope="module")
def network(checkpoint) -> ResNeXtModule:
    return ResNeXtModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Digits as PNG and JPEG files, some in a sub-folder, one corrupt, one not an image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    images, _ = digits_uint8(32)
    for i in range(GOOD + NESTED):
        where = root / f"{i}.png" if i < GOOD else root / "sub" / f"{i}.jpg"
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(where, quality=95)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    (root / "notes.txt").write_text("not an image by its extension: not listed")
    return root


def probabilities(network, images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> softmax, normalised as the module does on the device."""
    with torch.no_grad():
        return network((images.float() - network.mean) / network.std).softmax(1)


def predictions(root: Path) -> list[dict]:
    (path,) = root.rglob("predictions.csv")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def check_rows(rows: list[dict], count: int) -> None:
    """One row per image; five classes, probabilities falling and summing to at most 1."""
    assert len(rows) == count == len({row["path"] for row in rows})
    for row in rows:
        probs = [float(row[f"prob{j}"]) for j in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert len({row[f"top{j}"] for j in range(1, 6)}) == 5


def test_val_split_rows_are_the_networks_own_top5(checkpoint, network, tmp_path, capsys):
    assert main(["predict", "--config", DEMO, *QUIET, f"--data.init_args.image_size={RES}",
                 "--ckpt_path", str(checkpoint), "--run_root", str(tmp_path)]) == 0
    rows = predictions(tmp_path)
    images, labels = digits_uint8(RES)
    _, val = split(labels, 0.2, 0)
    check_rows(rows, len(val))
    assert [row["path"] for row in rows] == [f"val[{i}]" for i in range(len(val))]
    assert [row["label"] for row in rows] == [CLASSES[labels[i]] for i in val]
    for i in (0, 1, len(val) - 1):
        top = probabilities(network, images[val[i]][None])[0].topk(5)
        assert [rows[i][f"top{j + 1}"] for j in range(5)] == [CLASSES[c] for c in top.indices]
        assert np.allclose([float(rows[i][f"prob{j + 1}"]) for j in range(5)], top.values,
                           atol=2e-6)
    assert f"predictions: {len(val)} images -> " in capsys.readouterr().err


def test_folder_with_weights_file_skips_the_corrupt_image(checkpoint, network, photos,
                                                          tmp_path, capsys):
    """A plain state dict names no classes and no crop: the fc's 10 rows give the class count
    (named by index), the crop is given; the corrupt file is one line, the rest predicted."""
    weights = tmp_path / "weights.pth"
    torch.save(network.model.state_dict(), weights)
    assert main(["predict", "--config", DEMO, *QUIET, *NETWORK, "--model.weights", str(weights),
                 "--data", "resnext_lit.data.predict_folder.PredictFolderDataModule",
                 "--data.root", str(photos), f"--data.val_res={RES}", "--data.val_crop_ratio=1",
                 "--data.num_workers=0", "--run_root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("skipped ")] == [
        f"skipped {photos / 'sub' / 'broken.jpg'}: not an image file PIL can identify"]
    assert f"predictions: {GOOD + NESTED} images, 1 skipped (named above) -> " in err
    rows = predictions(tmp_path)
    check_rows(rows, GOOD + NESTED)
    files = [str(photos / f"{i}.png") for i in range(GOOD)] + \
        [str(photos / "sub" / f"{i}.jpg") for i in range(GOOD, GOOD + NESTED)]
    assert [row["path"] for row in rows] == files and {row["label"] for row in rows} == {""}
    for row in rows[:2]:
        image = torch.from_numpy(np.array(Image.open(row["path"]).convert("RGB")))
        image = TF.resize(image.permute(2, 0, 1), [RES, RES], antialias=True)
        top = probabilities(network, image[None])[0].topk(5)
        assert [row[f"top{j + 1}"] for j in range(5)] == [str(int(c)) for c in top.indices]
        assert abs(float(row["prob1"]) - float(top.values[0])) < 2e-6


def test_folder_takes_class_names_and_crop_from_the_checkpoint(checkpoint, photos, tmp_path):
    assert main(["predict", "--config", DEMO, *QUIET, "--ckpt_path", str(checkpoint),
                 "--data", "resnext_lit.data.predict_folder.PredictFolderDataModule",
                 "--data.root", str(photos), "--data.num_workers=0",
                 "--run_root", str(tmp_path)]) == 0
    (config,) = tmp_path.rglob("config.yaml")
    assert f"val_res: {RES}\n" in config.read_text()  # the checkpoint's, not ImageNet's 224
    rows = predictions(tmp_path)
    check_rows(rows, GOOD + NESTED)
    assert {row["top1"] for row in rows} <= set(CLASSES)


@pytest.mark.parametrize("args, message", [
    ([], "predict needs a trained network: --ckpt_path <checkpoint> or --model.weights <file>"),
    (["--ckpt_path", "CKPT", "--data.root", "nowhere"], "data.root nowhere: no such folder"),
    (["--ckpt_path", "CKPT", "--data.root", "EMPTY"], "holds no image files"),
])
def test_bad_input_is_one_line(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    args = [str(checkpoint) if a == "CKPT" else str(tmp_path / "empty") if a == "EMPTY" else a
            for a in args]
    folder = ["--data", "resnext_lit.data.predict_folder.PredictFolderDataModule"]
    assert main(["predict", "--config", DEMO, *QUIET, *(folder if "--data.root" in args else []),
                 *args, "--run_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("error: ")
    assert not list(tmp_path.rglob("predictions.csv"))


def test_merge_keeps_one_row_per_sample(tmp_path):
    """A sampler that pads its last shard hands one image to two ranks: one row is kept."""
    parts = [tmp_path / ".p.rank0", tmp_path / ".p.rank1"]
    parts[0].write_text("0,a,,x,0.9\n2,c,,x,0.7\n4,e,,x,0.5\n")
    parts[1].write_text("1,b,,x,0.8\n3,d,,x,0.6\n4,e,,x,0.5\n")  # 4: padding
    writer = PredictionWriter(top_k=1)
    writer._k = 1
    assert writer._merge(tmp_path / "p.csv", parts) == 5
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["path,label,top1,prob1", *(f"{n},,x,0.{9 - i}" for i, n in
                                                enumerate("abcde"))]
    assert not any(part.exists() for part in parts)


@pytest.mark.slow
def test_two_ddp_ranks_write_one_row_per_image(checkpoint, photos, tmp_path):
    """An odd number of images on 2 gloo ranks, DataLoader workers decoding: each image one row,
    in order; the corrupt file named once; no part file left."""
    out = subprocess.run([sys.executable, "-m", "resnext_lit", "predict", "--config", DEMO,
                          *QUIET, "--ckpt_path", str(checkpoint),
                          "--data", "resnext_lit.data.predict_folder.PredictFolderDataModule",
                          "--data.root", str(photos), "--data.batch_size=2",
                          "--data.num_workers=1", "--trainer.strategy=ddp",
                          "--trainer.devices=2", "--trainer.accelerator=cpu"],
                         cwd=tmp_path, env=run_env(tmp_path), text=True, capture_output=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert [line for line in lines if line.startswith("skipped ")] == [
        f"skipped {photos / 'sub' / 'broken.jpg'}: not an image file PIL can identify"]
    assert len([line for line in lines if line.startswith("predictions: ")]) == 1
    rows = predictions(tmp_path)
    check_rows(rows, GOOD + NESTED)
    assert [Path(row["path"]).name for row in rows] == \
        [f"{i}.png" for i in range(GOOD)] + [f"{i}.jpg" for i in range(GOOD, GOOD + NESTED)]
    assert [p.name for p in tmp_path.rglob(".predictions*")] == []


def test_cifar_names_its_classes_from_the_release_meta_file(cifar_make, tmp_path):
    """CIFAR-10's `batches.meta` (a pickled dict of names) names the classes; without it, none."""
    import pickle

    from resnext_lit.data.cifar import CIFARDataModule

    root = cifar_make(tmp_path)
    names = [f"class{i}" for i in range(10)]
    meta = root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    data = CIFARDataModule(str(root))
    assert data.classes == names and data.sample_name(7) == "test[7]"
    meta.unlink()
    assert CIFARDataModule(str(root)).classes is None
