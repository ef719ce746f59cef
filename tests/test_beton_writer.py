"""The .beton writer: records, sidecar, skip report, ImageNet val layouts, bad input, atomicity.

    .venv/bin/python -m pytest -q tests/test_beton_writer.py

Record contents are read back with FFCV's Reader (metadata only: no numba compilation here);
pixels are checked through the FFCVDataModule in test_ffcv_datamodule.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader
from PIL import Image
from scipy.io import savemat

from resnext_lit.cli import main as cli
from resnext_lit.data.beton.sidecar import read_beton_info, sidecar_path
from resnext_lit.data.beton.write import PARTIAL_SUFFIX, REPORT_SUFFIX, write_beton
from resnext_lit.data.ffcv import FFCVDataModule
from resnext_lit.data.images import BadImage, load_rgb
from resnext_lit.facts import dataset_name

from helpers import ctrl_c_enabled

REPO = Path(__file__).resolve().parents[1]
WRITE_TIMEOUT_S = 300  # a hung writer fails the test instead of the whole run
FILE_SIZE_LIMIT = 64 << 10  # above the header FFCV writes first, below its first data page
COMMON = ["--max-side", "32", "--workers", "2", "--no-progress"]


def labels_of(beton) -> list[int]:
    return Reader(str(beton)).metadata["f1"].tolist()


def images_of(beton) -> np.ndarray:
    return Reader(str(beton)).metadata["f0"]


def test_records_sidecar_and_report(beton_varied_written):
    written = beton_varied_written
    beton, good, bad = written["beton"], written["good"], written["bad"]
    info = read_beton_info(beton)
    classes = sorted(p.name for p in written["root"].iterdir())
    assert info["classes"] == classes
    assert info["num_records"] == len(good) == written["result"].num_records
    assert info["class_counts"] == np.bincount([label for _, label in good], minlength=3).tolist()
    assert info["skipped"] == len(bad) == 3
    assert info["write"] == {"max_side": 64, "write_mode": "proportion",
                             "compress_probability": 0.5, "jpeg_quality": 90, "seed": 0}
    # ImageFolder order, every good file once with its label.
    assert labels_of(beton) == [label for _, label in good]
    # Bad files: listed with a reason, in the result and in the report.
    assert {path for path, _ in written["result"].skipped} == set(bad)
    report = Path(str(beton) + REPORT_SUFFIX).read_text().splitlines()[1:]
    assert {line.split("\t")[0] for line in report} == set(bad)
    assert all(line.split("\t")[1] for line in report)
    # Every record fits the max side; the 2400 px images were shrunk to it exactly.
    meta = images_of(beton)
    sides = np.maximum(meta["width"], meta["height"])
    assert sides.max() == 64
    huge = [i for i, (path, _) in enumerate(good) if path.endswith("huge.jpg")]
    assert sides[huge].tolist() == [64] * 3 and meta["height"][huge].tolist() == [42] * 3
    assert set(meta["mode"].tolist()) == {0, 1}  # `proportion`: some JPEG, some raw
    # A small write is whole pages (one per writing worker): the estimate knows it.
    assert abs(written["result"].estimated_bytes / beton.stat().st_size - 1) < RAW_TOLERANCE
    # --dataset names the data for tables: the sidecar keeps it, the DataModule says it.
    assert info["dataset"] == "varied"
    data = FFCVDataModule(val_path=str(beton), batch_size=8)
    assert data.dataset == dataset_name(data, data.num_classes) == "varied"


def test_load_rgb_decodes_by_content(tmp_path):
    colour = (200, 40, 90)
    base = Image.new("RGB", (30, 20), colour)
    cases = {"cmyk.jpg": base.convert("CMYK"), "gray.jpg": base.convert("L"),
             "rgba.png": base.convert("RGBA"), "palette.png": base.convert("P")}
    for name, image in cases.items():
        image.save(tmp_path / name)
    base.save(tmp_path / "png_named.jpg", format="PNG")
    for name in [*cases, "png_named.jpg"]:
        rgb = load_rgb(tmp_path / name)
        assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8, name
    gray = load_rgb(tmp_path / "gray.jpg")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(load_rgb(tmp_path / "png_named.jpg").astype(int) - colour).max() == 0
    Image.new("RGB", (4000, 3000), colour).save(tmp_path / "huge.jpg")
    assert load_rgb(tmp_path / "huge.jpg", max_side=500).shape == (375, 500, 3)
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "huge.jpg").read_bytes()[:3000])
    (tmp_path / "junk.jpg").write_bytes(b"\x00\x01" * 500)
    for name, reason in [("zero.jpg", "zero-byte"), ("cut.jpg", "cannot decode"),
                         ("junk.jpg", "not an image")]:
        with pytest.raises(BadImage, match=reason):
            load_rgb(tmp_path / name)


def _synsets_mat(path: Path, wnids_in_id_order: list[str]) -> None:
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(k, w, f"words {k}", 0) for k, w in enumerate(wnids_in_id_order, start=1)]
    rows.append((1001, "n00001740", "entity (not a leaf)", 3))
    synsets = np.zeros((len(rows), 1), dtype=fields)
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    savemat(path, {"synsets": synsets})


def test_flat_imagenet_val_layouts(tmp_path, beton_make_folder, beton_make_flat_val, capsys):
    train = beton_make_folder(tmp_path / "train", per_class=4)["root"]
    classes = sorted(p.name for p in train.iterdir())  # n01440764, n01443537, n01484850
    # The devkit's ILSVRC2012_ID order is not the sorted order: ID 1 is the last folder here.
    id_order = [classes[2], classes[0], classes[1]]
    ids = [1, 2, 3, 3, 2, 1, 1, 3, 2]
    expected = [classes.index(id_order[k - 1]) for k in ids]
    val = beton_make_flat_val(tmp_path / "val", ids)
    stray = (val / "ILSVRC2012_val_00000001.JPEG").read_bytes()
    (val / "ILSVRC2012_val_00000099.JPEG").write_bytes(stray)
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("\n".join(map(str, ids)) + "\n")
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("\n".join(f"{w} some words" for w in id_order) + "\n")

    out = tmp_path / "devkit"
    assert cli(["write-beton", "--train", str(train), "--val", str(val), "--val-labels",
                str(truth), "--synsets", str(synsets), "--out", str(out), *COMMON]) == 0
    assert labels_of(out / "val.beton") == expected
    assert read_beton_info(out / "val.beton")["classes"] == classes
    # An image the ground truth does not know is skipped and reported, not guessed.
    assert "ILSVRC2012_val_00000099.JPEG" in (out / f"val.beton{REPORT_SUFFIX}").read_text()
    assert "skipped 1 files" in capsys.readouterr().out

    mat = tmp_path / "meta.mat"
    _synsets_mat(mat, id_order)
    assert cli(["write-beton", "--val", str(val), "--val-labels", str(truth), "--synsets",
                str(mat), "--classes", str(train), "--out", str(tmp_path / "mat"), *COMMON]) == 0
    assert labels_of(tmp_path / "mat" / "val.beton") == expected

    kaggle = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{i:08d},{id_order[k - 1]} 1 2 30 40 {id_order[k - 1]} 3 4 5 6"
            for i, k in enumerate(ids, start=1)]
    kaggle.write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    sidecar = str(sidecar_path(out / "train.beton"))  # classes from the train sidecar
    assert cli(["write-beton", "--val", str(val), "--val-labels", str(kaggle), "--classes",
                sidecar, "--out", str(tmp_path / "kaggle"), *COMMON]) == 0
    assert labels_of(tmp_path / "kaggle" / "val.beton") == expected


def test_strict_makes_skips_fatal(tmp_path, beton_make_folder, capsys):
    train = beton_make_folder(tmp_path / "train", per_class=2)["root"]
    out = tmp_path / "out"
    assert cli(["write-beton", "--train", str(train), "--out", str(out), "--strict", *COMMON]) == 1
    assert "3 files skipped" in capsys.readouterr().err
    assert not (out / "train.beton").exists() and not sidecar_path(out / "train.beton").exists()
    assert len((out / f"train.beton{REPORT_SUFFIX}").read_text().splitlines()) == 1 + 3


def _bad_inputs(tmp: Path, make) -> dict:
    good = make(tmp / "good", per_class=2)["root"]
    empty = tmp / "empty"
    (empty / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "a" / "x.jpg")
    (empty / "b").mkdir()
    (tmp / "a_file").write_text("")
    truth = tmp / "truth.txt"
    truth.write_text("1\n")
    csv = tmp / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n")
    flat = tmp / "flat"
    flat.mkdir()
    return {
        "missing input": (["--train", str(tmp / "nope")], "nope"),
        "empty class folder": (["--train", str(empty)], "empty/b"),
        "output under a file": (["--train", str(good), "--out", str(tmp / "a_file" / "x")],
                                "cannot write"),
        "devkit without synsets": (["--train", str(good), "--val", str(flat), "--val-labels",
                                    str(truth)], "--synsets"),
        "unknown synset": (["--train", str(good), "--val", str(flat), "--val-labels", str(csv)],
                           "n99999999"),
        "no split": ([], "--train and/or --val"),
        "bad max side": (["--train", str(good), "--max-side", "0"], "max_side"),
        "bad per class": (["--train", str(good), "--per-class", "0"], "per_class"),
        "adopt and write at once": (["--adopt", str(tmp / "a_file"), "--train", str(good)],
                                    "--adopt"),
    }


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, beton_make_folder, capsys):
    cases = _bad_inputs(tmp_path, beton_make_folder)
    for name, (args, culprit) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        if "--out" not in args:
            args = [*args, "--out", str(out)]
        assert cli(["write-beton", *COMMON, *args]) == 2, name  # later flags win
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and culprit in err, (name, err)
        assert not out.exists() or not list(out.glob("*.beton*")), name


def test_failed_worker_leaves_nothing_and_rerun_succeeds(tmp_path, beton_make_folder):
    """A file-size limit (a quota; a full disk fails alike, ENOSPC) kills FFCV's writer workers
    at their first page; FFCV alone would wait for them forever. Real: the write runs in a
    process under RLIMIT_FSIZE, which its forkserver, the writer and FFCV's workers inherit."""
    train = beton_make_folder(tmp_path / "train", per_class=10)["root"]
    beton = tmp_path / "out" / "train.beton"
    limited = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write(2) then fails with EFBIG, no kill
resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT}))
from resnext_lit.data.beton.processes import WriteFailed
from resnext_lit.data.beton.write import write_beton
try:
    write_beton({str(train)!r}, {str(beton)!r}, max_side=32, workers=2, progress=False)
except WriteFailed as err:
    sys.exit(str(err))
"""
    done = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True,
                          timeout=WRITE_TIMEOUT_S)
    message = done.stderr.strip()
    assert done.returncode == 1 and re.fullmatch(
        r"writer worker \d+ failed: OSError: \[Errno 27\] File too large \(disk full\?\)",
        message), (done.returncode, done.stderr)
    assert list(beton.parent.iterdir()) == []  # no .partial, no report of an unwritten .beton
    result = write_beton(train, beton, max_side=32, workers=2, progress=False)
    assert read_beton_info(beton)["num_records"] == result.num_records == 33


def _noise_folder(root: Path, count: int, side: int = 200) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(count // 2):
            pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:04d}.png", compress_level=0)
    return root


# -- the writer at scale: size estimate, free disk, subsets, progress ------------------------
RAW_TOLERANCE, JPEG_TOLERANCE = 0.10, 2.0  # estimate vs the written file (raw: relative error)
PHOTO_SIDE, PHOTO_COUNT = 400, 200  # ~75 MB raw: the image bytes outweigh FFCV's 8 MiB pages


def _photo_folder(root: Path) -> Path:
    """Crops of the natural photos matplotlib and scikit-learn ship: JPEG compresses them as it
    does ImageNet's, unlike flat colours or noise."""
    from resnext_lit.bench.imagenet_like import photo_paths

    rng = np.random.default_rng(0)
    photos = [np.array(Image.open(path).convert("RGB")) for path in photo_paths()]
    for i in range(PHOTO_COUNT):
        photo = photos[i % len(photos)]
        height, width = (int(rng.integers(PHOTO_SIDE // 2, PHOTO_SIDE)) for _ in range(2))
        top, left = (int(rng.integers(0, n - m)) for n, m in zip(photo.shape, (height, width)))
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[top:top + height, left:left + width]).save(folder / f"{i}.jpg",
                                                                         quality=90)
    return root


def test_size_estimate_is_close_to_the_written_file_and_the_bar_has_an_eta(tmp_path, capfd):
    source = _photo_folder(tmp_path / "photos")
    out = tmp_path / "raw"
    args = ["write-beton", "--train", str(source), "--out", str(out), "--workers", "2",
            "--max-side", str(PHOTO_SIDE), "--write-mode", "raw"]
    assert cli(args) == 0
    captured = capfd.readouterr()
    match = re.search(r"estimated ([\d.]+) MB for train \(free: [\d.]+ [GMk]B\)", captured.out)
    actual = (out / "train.beton").stat().st_size
    assert match and abs(float(match[1]) * 1e6 / actual - 1) < RAW_TOLERANCE, (match, actual)
    # FFCV's write bar knows its total, so tqdm shows the elapsed<remaining time.
    assert re.search(rf"write train: 100%.*\| {PHOTO_COUNT}/{PHOTO_COUNT} \[\d\d:\d\d<\d\d:\d\d",
                     captured.err), captured.err[-500:]

    jpeg = write_beton(source, tmp_path / "jpg.beton", max_side=PHOTO_SIDE, write_mode="jpg",
                       workers=2, progress=False)
    ratio = jpeg.estimated_bytes / jpeg.beton.stat().st_size
    assert 1 / JPEG_TOLERANCE < ratio < JPEG_TOLERANCE, ratio


def test_too_little_free_disk_is_refused_before_anything_is_written(tmp_path, beton_make_folder,
                                                                    monkeypatch, capsys):
    train = beton_make_folder(tmp_path / "train", per_class=2)["root"]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("a file of the user's")
    (kept / f"train.beton{PARTIAL_SUFFIX}").write_bytes(b"x" * 10)  # a killed run's leftover
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    for out in (kept, tmp_path / "new" / "betons"):
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        argv = ["write-beton", "--train", str(train), "--val", str(train), "--out", str(out),
                *COMMON]
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(r"error: not enough free disk in \S+: estimated [\d.]+ MB for "
                            r"train, [\d.]+ MB for val, 1\.0 kB free; nothing written", err), err
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    assert not (tmp_path / "new").exists()  # the folders it made are gone again


def test_per_class_writes_the_first_decodable_images_of_each_class(tmp_path, beton_make_folder):
    folder = beton_make_folder(tmp_path / "train", per_class=4)
    out = tmp_path / "out"
    argv = ["write-beton", "--train", str(folder["root"]), "--val", str(folder["root"]),
            "--out", str(out), "--per-class", "2", *COMMON]
    assert cli(argv) == 0
    # Listing order; class 1 lists garbage.jpg (undecodable) first, so its third file is taken.
    expected = sum([[s for s in folder["good"] if s[1] == label][:2] for label in range(3)], [])
    for split in ("train", "val"):
        beton = out / f"{split}.beton"
        assert labels_of(beton) == [0, 0, 1, 1, 2, 2]
        info = read_beton_info(beton)
        assert info["class_counts"] == [2, 2, 2] and info["per_class"] == 2
        sizes = [load_rgb(path, 32).shape[:2] for path, _ in expected]
        meta = images_of(beton)
        assert list(zip(meta["height"].tolist(), meta["width"].tolist())) == sizes
        report = Path(str(beton) + REPORT_SUFFIX).read_text().splitlines()[1:]
        assert [Path(line.split("\t")[0]).name for line in report] == ["garbage.jpg"]  # only


SHARED_MEMORY = "/dev/shm"  # where FFCV's writer keeps its metadata while it writes


def _interrupt_mid_write(source: Path, out: Path, sig: int, delay: float = 0.0) -> int:
    """Start a real writer process, send `sig` `delay` s after its .partial file appears, return
    its status."""
    partial = out / f"train.beton{PARTIAL_SUFFIX}"
    proc = subprocess.Popen([sys.executable, "-m", "resnext_lit", "write-beton", "--train",
                             str(source), "--out", str(out), "--write-mode", "raw",
                             "--workers", "1", "--no-progress"], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=ctrl_c_enabled)
    try:
        stop = time.monotonic() + WRITE_TIMEOUT_S
        while not partial.exists() and proc.poll() is None and time.monotonic() < stop:
            time.sleep(0.005)
        time.sleep(delay)
        assert partial.exists() and proc.poll() is None, "the writer was not caught mid-write"
        proc.send_signal(sig)  # the main process only: as a crash, or Ctrl-C's SIGINT
        status = proc.wait(timeout=WRITE_TIMEOUT_S)
        assert _group_ends(proc.pid), "writer processes outlived the writer command"
        return status
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only if the assertion above failed
        except ProcessLookupError:
            pass


def _group_ends(group: int, seconds: float = 10.0) -> bool:
    """Whether every process of the command's group (writer process, FFCV workers, Python's
    resource tracker, which unlinks leaked shared memory) exits within `seconds`."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_interrupted_write_leaves_no_final_file_and_rerun_succeeds(tmp_path):
    source = _noise_folder(tmp_path / "train", 300)
    out = tmp_path / "out"
    beton = out / "train.beton"

    shm = set(os.listdir(SHARED_MEMORY))
    for delay in (0.0, 0.05):  # right as FFCV sets up (its shared memory), and later
        assert _interrupt_mid_write(source, out, signal.SIGINT, delay) == 130
        assert not beton.exists() and not sidecar_path(beton).exists()
        assert not Path(str(beton) + PARTIAL_SUFFIX).exists()  # Ctrl-C cleans up after itself
        assert not {n for n in os.listdir(SHARED_MEMORY) if n.startswith("psm_")} - shm

    assert _interrupt_mid_write(source, out, signal.SIGKILL) == -signal.SIGKILL  # no orphans
    assert not beton.exists() and not sidecar_path(beton).exists()
    assert Path(str(beton) + PARTIAL_SUFFIX).exists()  # a crash cannot; the rerun replaces it

    result = write_beton(source, beton, workers=2, progress=False)
    assert read_beton_info(beton)["num_records"] == result.num_records == 300
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.beton", "train.beton.json", f"train.beton{REPORT_SUFFIX}"])
