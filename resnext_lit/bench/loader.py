"""`python -m resnext_lit bench loader [--tiny]`: FFCV vs torchvision vs a raw decode ceiling.

    python -m resnext_lit bench loader --out runs/bench/loader.json

All contenders make the same training batches from the same ImageNet-like set
(`imagenet_like.py`: 2,000 JPEGs of real photos, cached under --data-dir): RandomResizedCrop
(8%-100% of the area, aspect 3/4-4/3) to 176 px + horizontal flip, uint8 out, with the same
number of workers on the same cores. One repeat is one epoch (drop_last batches); the figure is
images/s, median of the repeats after a warm-up epoch (which pays FFCV's numba compilation and
starts the DataLoader workers).

- ffcv: `FFCVDataModule.train_dataloader()` on the set's .beton (written by `write_beton` with
  the project's defaults: longer side <= 500 px, half JPEG at quality 90, half raw pixels): its
  crop and flip seeded per sample (`resnext_lit.data.seeded_crop`).
- ffcv_own_ops: FFCV's own `RandomResizedCropRGBImageDecoder` + `RandomHorizontalFlip` (unseeded,
  numba's generators) in a plain FFCV `Loader` with the same settings: what the seeding costs.
- torchvision: `torchvision.datasets.ImageFolder` (PIL decode) + `transforms.RandomResizedCrop`
  + `RandomHorizontalFlip` + `PILToTensor` in a `DataLoader` with persistent workers: what a
  user would write instead.
- folder_datamodule: our `ImageFolderDataModule` (the same, with tensor transforms).
- ceiling: a tight loop in a process pool of the same size that reads the very records FFCV
  reads from the .beton (JPEG or raw), decodes the JPEGs with libjpeg-turbo through simplejpeg
  (fast integer DCT, as FFCV's `TJFLAG_FASTDCT`; OpenCV's `imdecode` if simplejpeg is missing),
  crops with the same sampler, resizes with OpenCV's INTER_AREA (FFCV's resizer) into a
  reused batch buffer and mirrors half. It decodes what FFCV decodes (not the original files:
  the .beton holds smaller images, half of them raw), and hands nothing back, so it is the
  practical ceiling; its Python costs a few microseconds per image, so a compiled loader can
  come within a few percent of it (or pass it in --tiny runs, where per-batch costs dominate).
- ceiling_files: the same loop on the original JPEG files (what torchvision decodes).

`per_image_ms_one_core` in the JSON times each stage on one core, which bounds the best
ffcv / torchvision ratio that these stored bytes allow (printed as a note).

Goals: ffcv >= 3.0x torchvision and >= 0.8x ceiling (issue 6); the seeded decode >= 0.97x FFCV's
own ops (issue 31).
"""

from __future__ import annotations

import math
import multiprocessing
import time

import cv2
import numpy as np

from resnext_lit.data import INCEPTION_RATIO, INCEPTION_SCALE
from resnext_lit.data.workers import usable_cores
from resnext_lit.pools import WorkerPool

from .common import Report, interleave
from .imagenet_like import ensure_dataset

# 11 rounds: load comes and goes on shared machines; more rounds steady the paired median.
NORMAL = dict(num_images=2000, batch_size=64, res=176, repeats=11, warmup=1)
TINY = dict(num_images=96, batch_size=16, res=48, repeats=5, warmup=1)
CROP_TRIES = 10  # then fall back to the centre crop (Szegedy et al.; FFCV and torchvision)
JPEG_MODE = 0    # FFCV's RGBImageField record modes: 0 JPEG, 1 raw pixels
PROFILED_IMAGES = 200  # records timed stage by stage (`per_image_costs`)


def random_resized_crop(rng, height: int, width: int, scale=INCEPTION_SCALE,
                        ratio=INCEPTION_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception crop: a random area share and log-uniform aspect."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# -- the ceiling: state inherited by the forked workers -------------------------------------
_CEILING: dict = {}


def _decoder():
    try:
        import simplejpeg

        return "simplejpeg (libjpeg-turbo, fastdct)", lambda data: simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=False)
    except ImportError:  # OpenCV's bundled libjpeg-turbo: accurate DCT, a slightly lower ceiling
        return "cv2.imdecode (libjpeg-turbo, accurate DCT)", lambda data: cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def _ceiling_batch(task: tuple[np.ndarray, int]) -> int:
    indices, seed = task
    state = _CEILING
    if "out" not in state:
        cv2.setNumThreads(1)  # one core per worker, as FFCV's one thread per worker
        res = state["res"]
        state["out"] = np.empty((len(indices), res, res, 3), np.uint8)
        state["decode"] = _decoder()[1]
    out, decode, rng = state["out"], state["decode"], np.random.default_rng(seed)
    for slot, i in enumerate(indices):
        image = state["load"](int(i), decode)
        top, left, h, w = random_resized_crop(rng, image.shape[0], image.shape[1])
        cv2.resize(image[top:top + h, left:left + w], out.shape[1:3], dst=out[slot],
                   interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            out[slot] = out[slot, :, ::-1]
    return len(indices)


def _beton_loader(beton: str):
    """Record i of the .beton as FFCV stores it: JPEG bytes or raw pixels (a view, no copy)."""
    from ffcv.reader import Reader

    reader = Reader(beton)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]  # fields are f0, f1, ...
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    jpeg_share = float(np.mean(meta["mode"] == JPEG_MODE))

    def load(i: int, decode):
        record = meta[i]
        start = int(record["data_ptr"])
        if record["mode"] == JPEG_MODE:
            return decode(data[start:start + size_of[start]])
        height, width = int(record["height"]), int(record["width"])
        return data[start:start + height * width * 3].reshape(height, width, 3)

    return load, len(meta), jpeg_share


def _files_loader(paths: list[str]):
    def load(i: int, decode):
        with open(paths[i], "rb") as f:
            return decode(f.read())

    return load


class DecodeCeiling:
    """A pool of `workers` processes running `_ceiling_batch` over one epoch per call."""

    def __init__(self, load, num_records: int, workers: int, batch_size: int, res: int):
        _CEILING.clear()
        _CEILING.update(load=load, res=res)
        self.num_records, self.batch_size = num_records, batch_size
        # Forked: the workers read `_CEILING` (the record loader, a memory map) as inherited.
        self.workers = WorkerPool(multiprocessing.get_context("fork"), workers)
        self.pool = self.workers.pool
        self.epoch_index = 0

    def epoch(self) -> float:
        rng = np.random.default_rng(self.epoch_index)
        self.epoch_index += 1
        order = rng.permutation(self.num_records)
        batches = self.num_records // self.batch_size
        tasks = [(order[b * self.batch_size:(b + 1) * self.batch_size], int(rng.integers(2**31)))
                 for b in range(batches)]
        start = time.perf_counter()
        done = sum(self.pool.imap_unordered(_ceiling_batch, tasks))
        return done / (time.perf_counter() - start)

    def close(self) -> None:
        self.workers.close()


def per_image_costs(load, files: list[str], res: int, count: int) -> dict:
    """Single-core milliseconds per image of each stage, on `count` records: why the ratios
    are what they are. `bound` is the torchvision pipeline's cost over the ceiling's: about the
    best ffcv / torchvision that any loader of these stored bytes can reach on equal cores."""
    from PIL import Image
    from torchvision import transforms

    decode, rng = _decoder()[1], np.random.default_rng(0)
    out = np.empty((res, res, 3), np.uint8)
    augment = transforms.Compose([
        transforms.RandomResizedCrop(res, scale=INCEPTION_SCALE, ratio=INCEPTION_RATIO),
        transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    stages = ("beton_read_or_decode", "beton_crop_resize", "pil_decode",
              "torchvision_transforms")
    totals = dict.fromkeys(stages, 0.0)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, as each loader worker
    try:
        for i in range(count):
            t0 = time.perf_counter()
            image = load(i, decode)
            t1 = time.perf_counter()
            top, left, h, w = random_resized_crop(rng, image.shape[0], image.shape[1])
            cv2.resize(image[top:top + h, left:left + w], (res, res), dst=out,
                       interpolation=cv2.INTER_AREA)
            t2 = time.perf_counter()
            with Image.open(files[i]) as file:
                pil = file.convert("RGB")
            t3 = time.perf_counter()
            augment(pil)
            t4 = time.perf_counter()
            for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                totals[key] += dt
    finally:
        cv2.setNumThreads(threads)
    # Full precision: a rounded figure can read 0 on a fast or a slow machine; display rounds.
    ms = {key: 1e3 * value / count for key, value in totals.items()}
    ceiling = ms["beton_read_or_decode"] + ms["beton_crop_resize"]
    ms["bound"] = (ms["pil_decode"] + ms["torchvision_transforms"]) / ceiling
    return ms


def loader_epoch(loader) -> float:
    """Images/s of one pass over `loader` (the consumer only counts the images)."""
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def torchvision_loader(train_dir, batch_size: int, res: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(res, scale=INCEPTION_SCALE, ratio=INCEPTION_RATIO),
        transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform)
    return DataLoader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0), [path for path, _ in dataset.samples]


def ffcv_own_ops(beton: str, batch_size: int, res: int, workers: int):
    """A plain FFCV Loader with FFCV's own (unseeded) crop and flip, as ffcv-imagenet builds
    it, with FFCVDataModule's other settings (random order, OS cache, 3 batches ahead)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    image = [RandomResizedCropRGBImageDecoder((res, res), scale=INCEPTION_SCALE,
                                              ratio=INCEPTION_RATIO),
             RandomHorizontalFlip(), ToTensor(), ToTorchImage()]
    return Loader(beton, batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                  os_cache=True, batches_ahead=3, drop_last=True,
                  pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(1)]})


def run(tiny: bool = False, data_dir: str = "runs/bench/data", repeats: int | None = None,
        workers: int | None = None) -> Report:
    from resnext_lit.data.ffcv import FFCVDataModule
    from resnext_lit.data.folder import ImageFolderDataModule

    cfg = dict(TINY if tiny else NORMAL)
    cfg["repeats"] = repeats or cfg["repeats"]
    workers = workers or usable_cores()
    start = time.perf_counter()
    data = ensure_dataset(data_dir, cfg["num_images"], tiny=tiny, workers=workers)
    prepare_s = time.perf_counter() - start
    batch, res = cfg["batch_size"], cfg["res"]
    folder = ImageFolderDataModule(str(data.train_dir), str(data.train_dir), batch_size=batch,
                                   res=res, num_workers=workers)
    folder.setup("fit")
    tv, files = torchvision_loader(data.train_dir, batch, res, workers)
    loaders = {"torchvision": tv, "folder_datamodule": folder.train_dataloader(),
               "ffcv": FFCVDataModule(str(data.beton), str(data.beton), batch_size=batch,
                                      res=res, num_workers=workers).train_dataloader()}
    loaders["ffcv_own_ops"] = ffcv_own_ops(str(data.beton), batch, res, workers)
    del tv, folder  # `loaders` holds the only references (see `finally`)
    load, num_records, jpeg_share = _beton_loader(str(data.beton))
    decoder, pools = _decoder()[0], []
    try:
        ceiling = DecodeCeiling(load, num_records, workers, batch, res)
        pools.append(ceiling)
        ceiling_files = DecodeCeiling(_files_loader(files), len(files), workers, batch, res)
        pools.append(ceiling_files)
        costs = per_image_costs(load, files, res, min(num_records, len(files), PROFILED_IMAGES))
        # FFCV last in the warm-up round: the DataLoaders fork their workers before numba's
        # thread pool exists (forking a process with live threads is unsafe, and numba says so).
        runs = {name: (lambda name=name: loader_epoch(loaders[name])) for name in loaders}
        values = interleave({"torchvision": runs["torchvision"],
                             "folder_datamodule": runs["folder_datamodule"],
                             "ceiling": ceiling.epoch, "ceiling_files": ceiling_files.epoch,
                             "ffcv": runs["ffcv"], "ffcv_own_ops": runs["ffcv_own_ops"]},
                            cfg["repeats"], cfg["warmup"])
    finally:
        for pool in pools:
            pool.close()
        # torch stops a loader's persistent workers when the loader is freed (its iterator's
        # `__del__`; there is no public call to stop them sooner): none outlives this function.
        loaders.clear()
    report = Report("loader", tiny, {
        **cfg, "workers": workers, "cores": usable_cores(), "dataset": data.stats,
        "dataset_dir": str(data.root), "prepare_seconds": round(prepare_s, 1),
        "beton_jpeg_share": round(jpeg_share, 3), "ceiling_decoder": decoder,
        "per_image_ms_one_core": costs,
        "augmentation": "RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + flip, uint8"})
    for name, vals in values.items():
        report.measure(name, vals, "img/s", cfg["warmup"])
    report.ratio("ffcv / torchvision", "ffcv", "torchvision", (">=", 3.0))
    report.ratio("ffcv / ceiling", "ffcv", "ceiling", (">=", 0.8))
    report.ratio("ffcv / folder_datamodule", "ffcv", "folder_datamodule", None)
    report.ratio("ffcv seeded / ffcv's own ops", "ffcv", "ffcv_own_ops", (">=", 0.97),
                 why="the per-sample seeded crop and flip against FFCV's unseeded ones")
    report.ratio("torchvision / ceiling_files", "torchvision", "ceiling_files", None,
                 why="how close PIL + transforms come to a raw decode of the same files")
    report.note(f"one core, ms per image: beton read/decode {costs['beton_read_or_decode']:.3f}"
                f" + crop-resize {costs['beton_crop_resize']:.3f}; torchvision: PIL decode "
                f"{costs['pil_decode']:.3f} + transforms {costs['torchvision_transforms']:.3f}: no "
                f"loader of these bytes can beat torchvision by more than ~{costs['bound']:.1f}x")
    report.note(f"set: {data.stats['num_images']} JPEGs, mean {data.stats['mean_width']:.0f} x "
                f"{data.stats['mean_height']:.0f} px, {data.stats['bytes_per_pixel']} B/px "
                f"(ImageNet ~{data.stats['imagenet_bytes_per_pixel']}); beton "
                f"{jpeg_share:.0%} JPEG records; ceiling decoder: {decoder}")
    return report
