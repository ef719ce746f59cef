"""FFCVDataModule and ImageFolderDataModule: the round trip from a messy ImageFolder to batches,
one-line errors before any heavy work, exact val shards, progressive resizing.

    .venv/bin/python -m pytest -q tests/test_ffcv_datamodule.py

The first loader of the session pays FFCV's numba compilation (5-20 s on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from resnext_lit.data import CROP_RATIO
from resnext_lit.data.beton import write_beton
from resnext_lit.data.beton.sidecar import read_beton_info, sidecar_path
from resnext_lit.data.distributed import ExactShardSampler, rank_slice
from resnext_lit.data.ffcv import FFCVDataModule, ProgressiveResizing
from resnext_lit.data.folder import ImageFolderDataModule
from resnext_lit.data.images import export_imagefolder, load_rgb
from resnext_lit.models import complexity, create_model

COLOUR_TOLERANCE = 8  # 0-255 levels: JPEG at quality 90 and resizing of flat colours
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_workers=2, batch_size=32, res=48, val_res=40)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches (copied: FFCV reuses its batch buffers) as mean colours [N, 3] and labels."""
    means, labels = [], []
    for images, targets in loader:
        assert images.dtype == torch.uint8 and targets.dtype == torch.int64
        assert images.ndim == 4 and images.shape[1] == 3 and targets.shape == images.shape[:1]
        means.append(images.float().mean((2, 3)))
        labels.append(targets.clone())
    return torch.cat(means), torch.cat(labels)


def test_round_trip_every_good_image_once_with_its_label(beton_varied_written):
    written = beton_varied_written
    dm = FFCVDataModule(written["beton"], written["beton"], **TINY)
    assert dm.num_classes == 3 and dm.image_size == 48 and dm.num_val == len(written["good"])

    val = dm.val_dataloader()
    images, _ = next(iter(val))
    assert tuple(images.shape) == (32, 3, 40, 40)
    means, labels = collect(val)
    assert labels.tolist() == [label for _, label in written["good"]]  # all, once, in order
    # Each record is its own file: flat colours, compared with the file decoded by PIL.
    expected = torch.tensor(np.array([load_rgb(p).reshape(-1, 3).mean(0)
                                      for p, _ in written["good"]]))
    assert (means - expected).abs().max() < COLOUR_TOLERANCE

    train = dm.train_dataloader()
    images, labels = next(iter(train))
    assert tuple(images.shape) == (32, 3, 48, 48) and labels.shape == (32,)
    _, epoch_labels = collect(train)
    assert len(epoch_labels) == len(written["good"]) // 32 * 32  # drop_last in training
    assert set(epoch_labels.tolist()) <= {0, 1, 2}


USES: list[tuple[str, str]] = []  # (event, phase), in order: what the fit below did


class BatchUse(L.Callback):
    """Records when the loop starts and ends using each batch (`--trainer.callbacks+=`)."""

    def on_train_batch_start(self, *args):
        USES.append(("start", "train"))

    def on_train_batch_end(self, *args):
        USES.append(("end", "train"))

    def on_validation_batch_start(self, *args):
        USES.append(("start", "val"))

    def on_validation_batch_end(self, *args):
        USES.append(("end", "val"))


@pytest.mark.slow
def test_lightning_uses_one_ffcv_batch_at_a_time(beton_varied_written, monkeypatch, tmp_path):
    """FFCV refills a batch's buffers a few batches after handing it out, so a consumer must be
    done with batch b before it fetches b + `batches_ahead` + 1. A real `fit` through the CLI,
    with every built-in callback: Lightning 2.6 fetches the next batch of a sized loader only
    after the last hook that sees the current one (no prefetch), so one batch is in use at a
    time, and FFCV's own queue length is safe."""
    from ffcv.loader.epoch_iterator import EpochIterator

    from resnext_lit.cli import main

    fetch = EpochIterator.__next__

    def recorded(self):
        batch = fetch(self)
        USES.append(("fetch", "ffcv"))
        return batch

    monkeypatch.setattr(EpochIterator, "__next__", recorded)
    monkeypatch.chdir(tmp_path)
    USES.clear()
    beton = str(beton_varied_written["beton"])
    assert main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"),
                 "--data=resnext_lit.data.ffcv.FFCVDataModule", f"--data.train_path={beton}",
                 f"--data.val_path={beton}", "--data.batch_size=16", "--data.res=32",
                 "--data.val_res=40", "--data.num_workers=2", "--data.batches_ahead=2",
                 "--model.arch=resnext11_2x4d", "--trainer.max_epochs=2",
                 "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=3",
                 "--trainer.num_sanity_val_steps=0", "--model.warmup_epochs=0",
                 "--trainer.callbacks+=test_ffcv_datamodule.BatchUse"]) == 0
    events = [event for event, _ in USES]
    assert events.count("start") == 2 * (4 + 3)
    # Every fetch is used, start to end, before the next fetch: never two batches in hand.
    assert events == ["fetch", "start", "end"] * (2 * (4 + 3)), events
    # The record counts MACs where its errors are measured: at val_res, not the train res.
    (path,) = tmp_path.rglob("results.json")
    record = json.loads(path.read_text())
    assert record["resolution"] == {"train": 32, "train_final": 32, "val": 40,
                                    "val_crop_ratio": 0.875}
    assert record["model"]["image_size"] == 40
    network = create_model("resnext11_2x4d", num_classes=record["model"]["num_classes"])
    assert record["model"]["macs"] == complexity(network, 40)["macs"]


def test_validate_needs_only_a_val_beton_and_fit_says_what_it_lacks(beton_varied_written,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
    """`validate` of a weights file on FFCV with only `data.val_path` (the README's first
    check, shrunk): it scores the file's weights; `fit` with no train_path is one line."""
    from resnext_lit.cli import main

    monkeypatch.chdir(tmp_path)
    beton = str(beton_varied_written["beton"])
    classes = len(beton_varied_written["result"].class_counts)
    weights = tmp_path / "weights.pth"
    torch.save(create_model("resnext11_2x4d", num_classes=classes).state_dict(), weights)
    args = ["--config", str(ROOT / "configs" / "demo.yaml"),
            "--data=resnext_lit.data.ffcv.FFCVDataModule", f"--data.val_path={beton}",
            "--data.batch_size=16", "--data.res=32", "--data.val_res=32",
            "--data.num_workers=2", "--model.arch=resnext11_2x4d",
            "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"]
    assert main(["validate", *args, f"--model.weights={weights}"]) == 0
    (path,) = tmp_path.rglob("results.json")
    record = json.loads(path.read_text())
    assert (record["stage"], record["status"], record["evaluated"]) == \
        ("validate", "finished", str(weights))
    assert record["final"]["val/top1_err"] is not None
    capsys.readouterr()
    assert main(["fit", *args, "--run_name=fit"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: fit needs data.train_path (a .beton file); validate and test need only "
        "data.val_path")


def test_an_abandoned_epoch_stops_even_when_all_of_it_is_queued(beton_varied_written):
    """An epoch whose batches all fit in FFCV's queue leaves its producer waiting, with no
    timeout, to queue the end-of-epoch sentinel. A new epoch must still stop it: before
    `_StoppableEpoch.stop` emptied the queue, a 2-rank DDP fit hung there for good."""
    beton = beton_varied_written["beton"]
    dm = FFCVDataModule(beton, beton, **{**TINY, "val_batch_size": 128, "batches_ahead": 3})
    loader = dm.val_dataloader()
    assert len(loader) == 3  # 303 records: 128 + 128 + 47, as many as the queue holds
    first = iter(loader)
    deadline = time.monotonic() + 60
    while not first.output_queue.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.output_queue.full()  # three batches queued, the sentinel waiting
    second = threading.Thread(target=iter, args=(loader,), daemon=True)
    second.start()
    second.join(timeout=30)
    assert not second.is_alive(), "a new epoch waited forever for the abandoned one"
    assert not first.is_alive()


@pytest.mark.slow
def test_a_mid_epoch_resume_starts_the_epoch_in_without_decoding_what_it_skips(
        beton_varied_written, monkeypatch):
    """`skip_batches(k)` (what ExactResume calls on a mid-epoch resume) yields the epoch's
    batches from the k-th on, in the same order, and reads and decodes only those: counted at
    FFCV's `run_pipeline` (one call per batch) rather than timed."""
    from resnext_lit.data.ffcv import _StoppableEpoch

    beton = beton_varied_written["beton"]
    dm = FFCVDataModule(beton, beton, **TINY)
    loader = dm.train_dataloader()
    decoded = []  # this loader's batches only (an earlier test's epoch may still be producing)
    run_pipeline = _StoppableEpoch.run_pipeline
    monkeypatch.setattr(_StoppableEpoch, "run_pipeline", lambda self, *a, **k: (
        self.loader is loader and decoded.append(1)) or run_pipeline(self, *a, **k))
    batches = len(loader)
    _, whole = collect(loader)                  # epoch 0, every batch
    assert len(decoded) == batches >= 4
    decoded.clear()
    loader.next_epoch = 0                       # epoch 0 again (the Trainer's, on a resume)
    loader.skip_batches(3)
    _, rest = collect(loader)
    assert len(decoded) == batches - 3          # the three skipped batches never decoded
    assert torch.equal(rest, whole[3 * TINY["batch_size"]:])  # the same order, from batch 3
    decoded.clear()
    loader.next_epoch = 0
    assert torch.equal(collect(loader)[1], whole) and len(decoded) == batches  # once only


def _copy(beton, folder, with_sidecar=True):
    folder.mkdir(exist_ok=True)
    shutil.copy(beton, folder / beton.name)
    if with_sidecar:
        shutil.copy(sidecar_path(beton), sidecar_path(folder / beton.name))
    return folder / beton.name


def test_bad_betons_and_arguments_fail_in_one_line(beton_varied_written, tmp_path):
    good = beton_varied_written["beton"]
    size = good.stat().st_size
    cases = {}
    cases["missing"] = (tmp_path / "nope.beton", {}, "does not exist")
    truncated = _copy(good, tmp_path / "b")
    truncated.write_bytes(good.read_bytes()[: size // 2])
    cases["truncated"] = (truncated, {}, "bytes but its sidecar says")
    garbage = _copy(good, tmp_path / "c")
    garbage.write_bytes(np.random.default_rng(0).bytes(size))
    cases["not a beton"] = (garbage, {}, "is not a .beton")
    changed = _copy(good, tmp_path / "d")
    data = bytearray(good.read_bytes())
    data[size - 100] ^= 0xFF  # same size and header, different content
    changed.write_bytes(bytes(data))
    cases["content changed"] = (changed, {}, "fingerprint")
    other = _copy(good, tmp_path / "e")
    info = json.loads(sidecar_path(other).read_text())
    sidecar_path(other).write_text(json.dumps({**info, "num_records": info["num_records"] - 1}))
    cases["sidecar of another write"] = (other, {}, "holds 303 records but its sidecar says 302")
    broken = _copy(good, tmp_path / "f")
    sidecar_path(broken).write_text("{not json")
    cases["corrupt sidecar"] = (broken, {}, "not valid JSON")
    cases["bad val_res"] = (good, {"val_res": 0}, "data.val_res")
    cases["no batch ahead"] = (good, {"batches_ahead": 0}, "data.batches_ahead")
    cases["quasi random on os cache"] = (good, {"order": "quasi_random"}, "os_cache")
    for name, (path, kwargs, message) in cases.items():
        with pytest.raises(ValueError) as err:
            FFCVDataModule(good, path, **{**TINY, **kwargs})
        text = str(err.value)
        assert message in text and "\n" not in text, (name, text)
        if name not in ("bad val_res", "no batch ahead", "quasi random on os cache"):
            assert str(path) in text, (name, text)

    quasi = FFCVDataModule(good, good, **{**TINY, "order": "quasi_random", "os_cache": False})
    quasi.trainer = SimpleNamespace(global_rank=0, world_size=2, current_epoch=0)
    with pytest.raises(ValueError, match="one process only"):
        quasi.setup("fit")  # FFCV's QUASI_RANDOM has no distributed mode

    for ratio in (0, 1.5, -1):  # refused before any file is read: these paths do not exist
        for datamodule in (FFCVDataModule, ImageFolderDataModule):
            with pytest.raises(ValueError) as err:
                datamodule(tmp_path / "none", tmp_path / "none", val_crop_ratio=ratio)
            assert str(err.value) == f"data.val_crop_ratio must be in (0, 1], got {ratio}"

    # Without its sidecar our own beton still loads, unchecked, named by the val sidecar.
    bare = _copy(good, tmp_path / "a", with_sidecar=False)
    assert FFCVDataModule(bare, good, **TINY).classes == read_beton_info(good)["classes"]

    renamed = _copy(good, tmp_path / "g")
    info = json.loads(sidecar_path(renamed).read_text())
    sidecar_path(renamed).write_text(json.dumps({**info, "classes": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match="other classes"):
        FFCVDataModule(good, renamed, **TINY)


def test_workers_above_the_cores_are_clipped(beton_varied_written):
    beton = beton_varied_written["beton"]
    with pytest.warns(UserWarning, match="usable cores"):
        dm = FFCVDataModule(beton, beton, **{**TINY, "num_workers": 512})
    assert 1 <= dm.num_workers < 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FFCVDataModule(beton, beton, **{**TINY, "num_workers": 1}).num_workers == 1


def test_val_shards_tile_the_split_exactly(beton_varied_written):
    for count, world in [(303, 2), (303, 4), (10, 3), (7, 7)]:
        shards = [rank_slice(count, rank, world) for rank in range(world)]
        assert [i for shard in shards for i in shard] == list(range(count))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        samplers = [list(ExactShardSampler(range(count), world, rank)) for rank in range(world)]
        assert sum(samplers, []) == list(range(count))
    with pytest.raises(ValueError, match="cannot be split"):
        rank_slice(2, 0, 3)

    beton = beton_varied_written["beton"]
    dm = FFCVDataModule(beton, beton, **TINY)
    per_rank = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3, current_epoch=0)
        per_rank.append(collect(dm.val_dataloader())[1])
    assert torch.cat(per_rank).tolist() == [label for _, label in beton_varied_written["good"]]


def test_progressive_resizing_schedule():
    schedule = ProgressiveResizing(min_res=160, max_res=192, start_ramp=65, end_ramp=76)
    res = [schedule.resolution(epoch) for epoch in range(88)]
    assert res[:66] == [160] * 66 and res[76:] == [192] * 12
    assert all(r % 32 == 0 for r in res) and res == sorted(res)
    assert res.index(192) == 71  # past the midpoint, 176 rounds up to 192 (ffcv-imagenet's rule)
    for bad in [dict(min_res=100, max_res=192), dict(min_res=224, max_res=192),
                dict(start_ramp=5, end_ramp=4)]:
        with pytest.raises(ValueError, match="ProgressiveResizing"):
            ProgressiveResizing(**{**dict(min_res=160, max_res=192, start_ramp=1, end_ramp=3),
                                   **bad})


class ShapeRecorder(L.LightningModule):
    """Records the first train batch shape of every epoch; learns nothing."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 3)
        self.shapes: dict[int, tuple] = {}

    def training_step(self, batch, batch_idx):
        images, _ = batch
        self.shapes.setdefault(self.current_epoch, tuple(images.shape))
        return self.layer(images.float().mean((2, 3))).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2,
                     limit_val_batches=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     callbacks=list(callbacks))


@pytest.mark.slow
def test_progressive_resizing_changes_batch_resolution_at_the_right_epochs(beton_varied_written):
    beton = beton_varied_written["beton"]
    dm = FFCVDataModule(beton, beton, **TINY)
    module = ShapeRecorder()
    resizing = ProgressiveResizing(min_res=32, max_res=96, start_ramp=1, end_ramp=3)
    _trainer(5, [resizing]).fit(module, dm)
    sides = [module.shapes[epoch][2:] for epoch in range(5)]
    assert sides == [(32, 32), (32, 32), (64, 64), (96, 96), (96, 96)]

    folder = ImageFolderDataModule(beton_varied_written["root"], beton_varied_written["root"],
                                   num_workers=0)
    with pytest.raises(ValueError, match="needs data: FFCVDataModule"):
        _trainer(1, [ProgressiveResizing(32, 64, 0, 1)]).fit(ShapeRecorder(), folder)
    # Without a ramp it is ffcv-imagenet's for the run's length, which must be one of theirs.
    with pytest.raises(ValueError, match="no ramp for trainer.max_epochs=1 "):
        _trainer(1, [ProgressiveResizing(32, 64)]).fit(ShapeRecorder(), dm)


def test_class_count_mismatch_with_the_model_fails_before_training(beton_varied_written):
    from resnext_lit.training.module import ResNeXtModule

    beton = beton_varied_written["beton"]
    model = ResNeXtModule(arch="resnext50_32x4d", cardinality=2, bottleneck_width=2, num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5 but the data has 3 classes"):
        _trainer(1).fit(model, FFCVDataModule(beton, beton, **TINY))


def _radial_images(count: int, height: int, width: int, rng) -> np.ndarray:
    """uint8 [count, H, W, 3]: red rises from 0 at the center to 255 at half the shorter side
    (so each crop ratio gives another picture); green and blue are a per-image flat colour."""
    rows, cols = np.mgrid[:height, :width]
    radius = np.hypot(rows - (height - 1) / 2, cols - (width - 1) / 2) / (min(height, width) / 2)
    images = np.empty((count, height, width, 3), dtype=np.uint8)
    images[..., 0] = np.round(255 * np.minimum(radius, 1))
    images[..., 1:] = rng.integers(0, 256, (count, 1, 1, 2), dtype=np.uint8)
    return images


def _resize_then_crop(path: str, val_res: int, ratio: float) -> torch.Tensor:
    """The papers' wording of the val crop, computed with PIL: resize the shorter side to
    val_res / ratio (256 for 224 at 224/256; 320 for 320 at 1.0), keep the val_res center."""
    from PIL import Image
    from torchvision.transforms import functional

    image = functional.resize(Image.open(path).convert("RGB"), round(val_res / ratio))
    return functional.pil_to_tensor(functional.center_crop(image, val_res))


def val_split(dm) -> tuple[torch.Tensor, list[int]]:
    """The whole val split as uint8 [N, 3, H, W] (copied: FFCV reuses its buffers) and labels."""
    batches = [(images.clone(), labels.tolist()) for images, labels in dm.val_dataloader()]
    return torch.cat([images for images, _ in batches]), sum([labels for _, labels in batches], [])


def test_imagefolder_datamodule_matches_ffcv(tmp_path):
    """Both DataModules crop the center square of side ratio x the shorter side, resized to
    val_res, at the default 224/256 and at Table 5's 1.0; each matches the resize-then-crop the
    papers describe (computed with PIL) at its own ratio, and not at the other."""
    # 64 x 96 images at val_res 28: 28 / (224/256) = 32 = 64 / 2, so crop-then-resize and
    # resize-then-crop cut the same pixels at both ratios and differ only by resampling.
    val_res = 28
    rng = np.random.default_rng(0)
    images = _radial_images(40, 64, 96, rng)
    labels = np.arange(40) % 4
    root = export_imagefolder(images, labels, ["c0", "c1", "c2", "c3"], tmp_path / "folder")
    beton = tmp_path / "val.beton"
    write_beton(root, beton, workers=2, progress=False)
    paths = sorted(root.glob("*/*.jpg"))  # ImageFolder order: class, then file name
    ratios = (CROP_RATIO, 1.0)
    reference = {r: torch.stack([_resize_then_crop(p, val_res, r) for p in paths]) for r in ratios}

    for ratio in ratios:
        args = {**TINY, "val_res": val_res, "val_crop_ratio": ratio}
        folder = ImageFolderDataModule(root, root, **args)
        folder.setup("fit")
        for name, dm in (("folder", folder), ("ffcv", FFCVDataModule(beton, beton, **args))):
            assert (dm.num_classes, dm.image_size, dm.val_image_size) == (4, 48, val_res)
            assert dm.val_crop_ratio == ratio
            got, got_labels = val_split(dm)
            assert got_labels == sorted(labels.tolist()), name
            for other in ratios:  # each image's colour also proves the order
                error = (got.int() - reference[other]).abs().max().item()
                assert (error <= COLOUR_TOLERANCE) == (other == ratio), (name, ratio, other, error)

    batch, _ = next(iter(folder.train_dataloader()))
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (32, 3, 48, 48)


def test_imagefolder_datamodule_names_a_broken_file(beton_varied_folder):
    root = beton_varied_folder["root"]
    dm = ImageFolderDataModule(root, root, **{**TINY, "num_workers": 0})
    dm.setup("validate")
    with pytest.raises(RuntimeError, match=r"truncated\.jpg: cannot decode"):  # first bad file
        collect(dm.val_dataloader())
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataModule(root, root / "missing")


def test_data_configs_build_the_datamodules(beton_varied_written):
    """configs/data/*.yaml parse against the DataModules' signatures, as LightningCLI reads them,
    alone (the paper's 224 from 256) and with Table 5's 320 px fragment after them."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    configs = Path(__file__).resolve().parents[1] / "configs"
    beton, root = str(beton_varied_written["beton"]), str(beton_varied_written["root"])
    overrides = {"imagenet_ffcv.yaml": ["--data.train_path", beton, "--data.val_path", beton],
                 "imagenet_folder.yaml": ["--data.train_dir", root, "--data.val_dir", root,
                                          "--data.val_labels", "null"]}
    table5 = ["--config", str(configs / "eval" / "table5_320.yaml")]
    for name, args in overrides.items():
        for extra, val in (([], (224, CROP_RATIO)), (table5, (320, 1.0))):
            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument("--config", action=ActionConfigFile)
            parser.add_subclass_arguments(L.LightningDataModule, "data")
            config = parser.parse_args(["--config", str(configs / "data" / name), *extra, *args,
                                        "--data.num_workers", "1"])
            dm = parser.instantiate(config).data
            assert (dm.num_classes, dm.image_size) == (3, 224), name
            assert (dm.val_image_size, dm.val_crop_ratio) == val, (name, extra)


# -- betons written elsewhere (ffcv-imagenet's write_imagenet.py), without our sidecar ----------
UNCHECKED = "is not checked against one"


def _notes(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if UNCHECKED in line]


@pytest.mark.slow
def test_foreign_betons_train_and_validate_from_their_labels(ffcv_foreign_betons, capfd):
    from resnext_lit.training.module import ResNeXtModule

    foreign = ffcv_foreign_betons
    train, val = foreign["train"], foreign["val"]
    assert train.suffix == ".ffcv" and not sidecar_path(train).exists()
    capfd.readouterr()
    dm = FFCVDataModule(train, val, **TINY)
    notes = _notes(capfd)
    assert len(notes) == 2 and str(train) in notes[0] and str(val) in notes[1]
    assert "\n" not in notes[0] and "--adopt" in notes[0]
    # Classes from the labels: 4 in train, named by index; val has only 0-2 and follows train.
    assert dm.num_classes == 4 and dm.classes == ["0", "1", "2", "3"]
    assert dm.class_counts == [10] * 4 and (dm.num_train, dm.num_val) == (40, 15)

    means, labels = collect(dm.val_dataloader())
    assert labels.tolist() == foreign["val_labels"]  # every record once, in order
    assert (means - torch.tensor(foreign["val_colours"]).float()).abs().max() < COLOUR_TOLERANCE
    images, labels = next(iter(dm.train_dataloader()))
    assert tuple(images.shape) == (32, 3, 48, 48) and set(labels.tolist()) <= {0, 1, 2, 3}

    # Names, given; one line per file (train twice here), and too few names for the labels.
    names = ["tench", "goldfish", "shark", "ray"]
    assert FFCVDataModule(train, train, **TINY, classes=names).classes == names
    assert len(_notes(capfd)) == 1
    with pytest.raises(ValueError, match=r"has labels 0\.\.3, outside the 3 classes given"):
        FFCVDataModule(train, val, **TINY, classes=names[:3])
    # num_classes from the labels is what the model is checked against.
    model = ResNeXtModule(arch="resnext50_32x4d", cardinality=2, bottleneck_width=2, num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5 but the data has 4 classes"):
        _trainer(1).fit(model, dm)


def test_adopt_writes_a_sidecar_that_the_checked_path_then_uses(ffcv_foreign_betons, tmp_path,
                                                                 capfd):
    from resnext_lit.cli import main as cli

    train = _copy(ffcv_foreign_betons["train"], tmp_path, with_sidecar=False)
    val = _copy(ffcv_foreign_betons["val"], tmp_path, with_sidecar=False)
    names = tmp_path / "LOC_synset_mapping.txt"  # ImageNet's: WNID first, then the words
    names.write_text("n01440764 tench\nn01443537 goldfish\nn01484850 shark\nn01491361 ray\n")
    assert cli(["write-beton", "--adopt", str(train), str(val), "--classes", str(names)]) == 0
    assert capfd.readouterr().out.count("adopted") == 2
    info = read_beton_info(train)
    assert info["classes"][0] == "n01440764" and info["class_counts"] == [10] * 4
    assert info["num_records"] == 40 and info["write"]["max_side"] == 56
    assert read_beton_info(val)["class_counts"] == [5, 5, 5, 0]

    dm = FFCVDataModule(train, val, **TINY)  # the checked path: sidecars, no note
    assert not _notes(capfd) and dm.classes == info["classes"]
    assert cli(["write-beton", "--adopt", str(train)]) == 0  # again: checked, left as is
    assert "left as is" in capfd.readouterr().out

    data = bytearray(train.read_bytes())
    data[-100] ^= 0xFF  # the sidecar's checks now apply: a changed file is caught
    train.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fingerprint"):
        FFCVDataModule(train, val, **TINY)
    assert cli(["write-beton", "--adopt", str(train)]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "remove" in err, err


def test_foreign_betons_of_other_fields_or_truncated_fail_in_one_line(ffcv_foreign_betons,
                                                                       tmp_path, capfd):
    from ffcv.fields import FloatField, RGBImageField
    from ffcv.writer import DatasetWriter

    from resnext_lit.cli import main as cli

    other = tmp_path / "regression.ffcv"
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    DatasetWriter(str(other), {"image": RGBImageField(), "label": FloatField()},
                  num_workers=1).from_indexed_dataset([(pixels, 0.5)] * 3)
    good = ffcv_foreign_betons["train"]
    cut = tmp_path / "cut.ffcv"
    cut.write_bytes(good.read_bytes()[:-1000])
    for path, culprit in ((other, "has fields image: RGBImageField, label: FloatField; "
                                  "expected image: RGBImageField, label: IntField"),
                          (cut, "truncated")):
        with pytest.raises(ValueError) as err:
            FFCVDataModule(good, path, **TINY)
        assert str(path) in str(err.value) and culprit in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
        assert cli(["write-beton", "--adopt", str(path)]) == 2
        line = capfd.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("error: ") and str(path) in line and culprit in line, line
        assert not sidecar_path(path).exists()


def test_predict_names_the_beton_records_in_order(beton_varied_written, tmp_path, capsys):
    """`predict` over a val beton: FFCV's loader is no torch DataLoader, so the rows are
    numbered from its record indices; each row names its record and its class."""
    from resnext_lit.cli import main

    beton = beton_varied_written["beton"]
    classes = read_beton_info(beton)["classes"]
    weights = tmp_path / "weights.pth"
    torch.save(create_model("resnext11_2x4d", num_classes=len(classes)).state_dict(), weights)
    assert main(["predict", "--config", str(ROOT / "configs" / "demo.yaml"),
                 "--data=resnext_lit.data.ffcv.FFCVDataModule", f"--data.val_path={beton}",
                 "--data.batch_size=16", "--data.val_res=32", "--data.num_workers=2",
                 "--model.arch=resnext11_2x4d", f"--model.weights={weights}",
                 "--trainer.limit_predict_batches=2", "--trainer.enable_progress_bar=false",
                 "--run_root", str(tmp_path)]) == 0
    assert "Couldn't infer the batch indices" not in capsys.readouterr().err
    (path,) = tmp_path.rglob("predictions.csv")
    rows = path.read_text().splitlines()[1:]
    dm = FFCVDataModule(val_path=str(beton), batch_size=32, val_res=32, num_workers=2)
    _, labels = collect(dm.val_dataloader())
    assert [row.split(",")[:2] for row in rows] == \
        [[f"{beton.name}[{i}]", classes[labels[i]]] for i in range(32)]
