"""Shared fixtures. Names start with the owning feature (`beton_`, `ffcv_`) so files don't clash."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BETON_CLASSES = ("n01440764", "n01443537", "n01484850")  # real ImageNet WNIDs, sorted
BETON_PER_CLASS = 100
BETON_MAX_SIDE = 64  # small records keep the tests fast; the huge image must shrink to this
BETON_HUGE_SIDE = 2400
BETON_COLOR_STEP = 40  # flat colours this far apart identify each image after JPEG and crops


# The longest files first (whole-file seconds measured on 2 cores, 2026-12-07): `make test`'s
# xdist workers take whole files in collection order, and a long file started last leaves the
# other worker idle while it runs. Within each file the order is pytest's.
LONGEST_FIRST = ("test_exact_resume.py",    # 206 s
                 "test_reliability.py",     # 139 s
                 "test_slurm.py",           # 126 s
                 "test_faults.py",          # 117 s
                 "test_run_identity.py",    # 113 s
                 "test_training.py",        # 74 s
                 "test_sweeps.py",          # 69 s
                 "test_demo.py",            # 58 s
                 "test_bad_inputs.py",      # 54 s
                 "test_beton_writer.py",    # 50 s
                 "test_bench.py",           # 48 s
                 "test_ffcv_datamodule.py",  # 33 s
                 "test_cifar.py")           # 29 s


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


# Process-wide servers multiprocessing starts once and keeps for the life of the test process
# (the beton writer's forkserver, and the resource tracker beside it): not workers of a test.
SHARED_SERVERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
CHILD_EXIT_GRACE_S = 20  # freed loaders' workers and stopped pools are still exiting


def live_children() -> dict[int, str]:
    """This process's live (not zombie) child processes: pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):  # ended meanwhile
            continue
        if int(parent) == os.getpid() and state != "Z" and not any(
                server in command for server in SHARED_SERVERS):
            found[int(stat.parent.name)] = command.strip()
    return found


@pytest.fixture(autouse=True)
def no_child_left():
    """After each test, the test process has no child process that the test started (pool
    workers, DataLoader workers, runs): a process that outlives its test is a leak a user's
    process would have too, and a worker that ignores SIGTERM can hang a later test. Leftovers
    are named, then killed so the next test starts clean."""
    before = set(live_children())
    yield
    deadline = time.monotonic() + CHILD_EXIT_GRACE_S
    while (left := {pid: cmd for pid, cmd in live_children().items() if pid not in before}) \
            and time.monotonic() < deadline:
        gc.collect()  # a loader in a reference cycle stops its workers once freed (0.2 s)
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"child processes left by this test: {left}"


def _colours():
    levels = range(0, 256, BETON_COLOR_STEP)
    return itertools.cycle(itertools.product(levels, levels, levels))


def _write_varied_folder(root: Path, per_class: int = BETON_PER_CLASS, seed: int = 0) -> dict:
    """An ImageFolder of flat-colour images of varied sizes and every awkward kind of file.

    Returns {"root", "good": [(path, label)] in ImageFolder order, "bad": {path: kind}}.
    """
    rng = np.random.default_rng(seed)
    colours = _colours()
    good, bad = [], {}
    for label, name in enumerate(BETON_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            width, height = (int(v) for v in rng.integers(24, 120, size=2))
            rgb = Image.new("RGB", (width, height), next(colours))
            kind = i % 10
            path = folder / f"img_{i:03d}.jpg"
            if kind == 1:
                rgb.convert("L").save(path, quality=95)
            elif kind == 2:
                rgb.convert("CMYK").save(path, quality=95)
            elif kind == 3:
                path = path.with_suffix(".png")
                rgba = rgb.convert("RGBA")
                rgba.putalpha(128)
                rgba.save(path)
            elif kind == 4:
                rgb.save(path, format="PNG")  # a PNG named .jpg
            elif kind == 5:
                path = path.with_suffix(".png")
                rgb.convert("P").save(path, transparency=0)  # palette with transparency
            else:
                rgb.save(path, quality=95)
            good.append((str(path), label))
        huge = folder / "huge.jpg"
        Image.new("RGB", (BETON_HUGE_SIDE, BETON_HUGE_SIDE * 2 // 3), next(colours)).save(huge)
        good.append((str(huge), label))
        (folder / "notes.txt").write_text("not an image: ignored, like torchvision does")
    first = root / BETON_CLASSES[0]
    (first / "zero.jpg").write_bytes(b"")
    bad[str(first / "zero.jpg")] = "zero-byte"
    Image.new("RGB", (90, 90), (10, 200, 30)).save(first / "truncated.jpg", quality=95)
    data = (first / "truncated.jpg").read_bytes()
    (first / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad[str(first / "truncated.jpg")] = "truncated"
    (root / BETON_CLASSES[1] / "garbage.jpg").write_bytes(rng.bytes(5000))
    bad[str(root / BETON_CLASSES[1] / "garbage.jpg")] = "undecodable"
    good.sort(key=lambda s: (s[1], s[0]))  # ImageFolder order: class, then path
    return {"root": root, "good": good, "bad": bad}


def _write_flat_val(root: Path, labels: list[int], size: int = 40) -> Path:
    """ImageNet's flat val layout: ILSVRC2012_val_{i:08d}.JPEG, i from 1, one per label."""
    root.mkdir(parents=True)
    colours = _colours()
    for i, _ in enumerate(labels, start=1):
        Image.new("RGB", (size, size + i % 7), next(colours)).save(
            root / f"ILSVRC2012_val_{i:08d}.JPEG", quality=95)
    return root


@pytest.fixture(scope="session")
def beton_make_folder():
    """Factory: (root, per_class=..., seed=...) -> the varied ImageFolder dict described below."""
    return _write_varied_folder


@pytest.fixture(scope="session")
def beton_make_flat_val():
    """Factory: (root, labels) -> a flat ImageNet-style val folder with len(labels) images."""
    return _write_flat_val


@pytest.fixture(scope="session")
def beton_varied_folder(tmp_path_factory) -> dict:
    """The generated ImageFolder (3 classes, ~300 images, 3 bad files); read-only for tests."""
    return _write_varied_folder(tmp_path_factory.mktemp("varied") / "train")


@pytest.fixture(scope="session")
def beton_varied_written(beton_varied_folder, tmp_path_factory) -> dict:
    """`beton_varied_folder` written once with the writer: adds "beton" and "result"."""
    from resnext_lit.data.beton import write_beton

    out = tmp_path_factory.mktemp("betons") / "train.beton"
    result = write_beton(beton_varied_folder["root"], out, max_side=BETON_MAX_SIDE, workers=2,
                         progress=False, dataset="varied")
    return {**beton_varied_folder, "beton": out, "result": result}


def _write_cifar(root: Path, num_classes: int = 10, per_file: int = 24, seed: int = 0) -> Path:
    """The official "python version" layout (pickled dicts of a uint8 [N, 3072] array and a label
    list) with random images: the real format, not the real data (nothing is downloaded)."""
    import pickle

    from torchvision.datasets import CIFAR10, CIFAR100

    rng = np.random.default_rng(seed)
    release, key = (CIFAR10, "labels") if num_classes == 10 else (CIFAR100, "fine_labels")
    folder = root / release.base_folder
    folder.mkdir(parents=True)
    for name, _ in (*release.train_list, *release.test_list):
        batch = {"batch_label": name, "filenames": [f"{name}_{i}.png" for i in range(per_file)],
                 "data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 key: rng.integers(0, num_classes, per_file).tolist()}
        if num_classes == 100:
            batch["coarse_labels"] = rng.integers(0, 20, per_file).tolist()
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"class_{i}" for i in range(num_classes)]
    (folder / release.meta["filename"]).write_bytes(
        pickle.dumps({release.meta["key"]: names}, protocol=2))
    return root


@pytest.fixture(scope="session")
def cifar_make():
    """Factory: (root, num_classes=10 or 100, per_file=24, seed=0) -> root holding the layout."""
    return _write_cifar


FFCV_FOREIGN_MAX_RES = 64  # ffcv-imagenet writes 500; small records keep the tests fast
# split: (classes, images per class, (height, width)); val lacks the last class, as one may.
FFCV_FOREIGN_SPLITS = {"train": (4, 10, (40, 56)), "val": (3, 5, (64, 32))}


def _write_like_ffcv_imagenet(folder: Path, path: Path, max_resolution: int) -> Path:
    """What ffcv-imagenet's write_imagenet.py does (their defaults, but the resolution): FFCV's
    own DatasetWriter over torchvision's ImageFolder, `proportion` mode, half JPEG at 90."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    writer = DatasetWriter(str(path), {
        "image": RGBImageField(write_mode="proportion", max_resolution=max_resolution,
                               compress_probability=0.50, jpeg_quality=90),
        "label": IntField(),
    }, num_workers=2)
    writer.from_indexed_dataset(ImageFolder(root=str(folder)), chunksize=100)
    return path


@pytest.fixture(scope="session")
def ffcv_foreign_betons(tmp_path_factory) -> dict:
    """Betons written as ffcv-imagenet writes them, with no sidecar, named like theirs
    (train_64_0.50_90.ffcv): "train" (4 classes x 10 flat-colour images of 40 x 56 px) and "val"
    (3 classes x 5, 64 x 32), with "<split>_labels" and "<split>_colours" (RGB per record)."""
    from resnext_lit.data.images import export_imagefolder

    root = tmp_path_factory.mktemp("foreign")
    colours = _colours()
    out = {}
    for split, (classes, per_class, size) in FFCV_FOREIGN_SPLITS.items():
        labels = np.repeat(np.arange(classes), per_class)  # ImageFolder order: class by class
        rgb = np.array([next(colours) for _ in labels], dtype=np.uint8)
        images = np.broadcast_to(rgb[:, None, None, :], (len(labels), *size, 3))
        folder = export_imagefolder(images, labels, [f"c{i}" for i in range(classes)],
                                    root / f"{split}_images")
        out[split] = _write_like_ffcv_imagenet(
            folder, root / f"{split}_{FFCV_FOREIGN_MAX_RES}_0.50_90.ffcv", FFCV_FOREIGN_MAX_RES)
        out[f"{split}_labels"], out[f"{split}_colours"] = labels.tolist(), rgb
    return out


@pytest.fixture(scope="session")
def digit_betons(tmp_path_factory) -> list[str]:
    """The demo's digit betons, and the arguments that train on them (`helpers.resume`)."""
    from helpers.resume import write_digit_betons

    return write_digit_betons(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def ffcv_uninterrupted(tmp_path_factory, digit_betons) -> Path:
    """A tiny FFCV fit with progressive resizing, never stopped: what stopped ones must match."""
    from helpers.resume import EPOCHS, PROGRESSIVE, TINY, batches, fit_here

    cwd = tmp_path_factory.mktemp("ffcv_uninterrupted")
    fit_here(cwd, *TINY, *digit_betons, PROGRESSIVE[0], *PROGRESSIVE[1:])
    seen = batches(cwd)
    assert [seen[e, 0]["shape"][-1] for e in range(EPOCHS)] == [32, 64, 64]  # the schedule ran
    assert seen[0, 0]["labels"] != seen[2, 0]["labels"]  # epochs are reshuffled
    return cwd
