"""An ImageNet-like JPEG ImageFolder (and its .beton) made from real photos, cached on disk.

    from resnext_lit.bench.imagenet_like import ensure_dataset
    data = ensure_dataset("runs/bench/data", num_images=2000)   # made once, then reused
    data.train_dir, data.beton, data.stats                    # ImageFolder, .beton, sizes

Why not random noise: JPEG cost depends on content (noise makes huge, slow files; flat colour
makes tiny, fast ones), so a decode benchmark needs photographs. The photos are the ones our
dependencies ship, never downloaded: matplotlib's `grace_hopper.jpg` and scikit-learn's
`china.jpg` and `flower.jpg`. Each image is a random rescale + crop + mirror of one of them,
with a small colour gain and light sensor-like grain, saved at JPEG quality 90.

Sizes follow ImageNet's spread: most images have a longer side of 500 px (ImageNet's typical
500 x 375 and 500 x 333), the rest range from 200 to 1000 px, a quarter of them portrait.
`stats` records the real mean size and bytes per pixel next to ImageNet's (ILSVRC-2012 train:
about 138 GB / 1.28 M files = ~110 KB per file at a mean of about 470 x 390 px, ~0.6 B/px).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from resnext_lit.pools import WorkerPool

from ..errors import UserError

FORMAT = 1  # bump when the generator changes, so old caches are rebuilt
JPEG_QUALITY = 90
DEFAULT_CLASSES = 10
TYPICAL_SIDE, TYPICAL_SHARE = 500, 0.7  # ImageNet: most images are 500 px on the longer side
SIDE_RANGE = (200, 1000)                # the rest: log-uniform longer side
ASPECTS = ((4 / 3, 0.55), (3 / 2, 0.25), (1.0, 0.1), (16 / 9, 0.05), (5 / 4, 0.05))
PORTRAIT_SHARE = 0.25
GRAIN_SIGMA = 3.0        # 0-255 levels of Gaussian grain: a camera's, not a noise image's
GAIN_RANGE = (0.85, 1.15)  # per-channel colour gain
TINY_SCALE = 0.25        # --tiny: the same spread at a quarter of the size
IMAGENET_BYTES_PER_PIXEL = 0.6  # ~110 KB per file / ~470 x 390 px (see the module docstring)


@dataclass(frozen=True)
class Dataset:
    root: Path
    train_dir: Path
    beton: Path
    stats: dict


def photo_paths() -> list[Path]:
    """The natural photos the generator draws from (shipped by matplotlib and scikit-learn)."""
    import matplotlib
    import sklearn.datasets

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    return [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
            sklearn_images / "china.jpg", sklearn_images / "flower.jpg"]


def image_size(rng: np.random.Generator, scale: float = 1.0) -> tuple[int, int]:
    """(width, height) drawn from the ImageNet-like spread described in the module docstring."""
    if rng.random() < TYPICAL_SHARE:
        side = TYPICAL_SIDE
    else:
        side = float(np.exp(rng.uniform(*np.log(SIDE_RANGE))))
    aspects, weights = zip(*ASPECTS, strict=True)
    aspect = aspects[rng.choice(len(aspects), p=np.array(weights) / sum(weights))]
    long_side, short_side = side * scale, side * scale / aspect
    if rng.random() < PORTRAIT_SHARE:
        return max(8, round(short_side)), max(8, round(long_side))
    return max(8, round(long_side)), max(8, round(short_side))


def make_image(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random view of `photo` (uint8 HxWx3) of `size` (w, h): rescale so the crop fits (often
    shrinking, which keeps the photo's full detail), crop, mirror, colour gain, grain."""
    width, height = size
    ph, pw = photo.shape[:2]
    scale = max(width / pw, height / ph) * rng.uniform(1.0, 1.6)
    new = (max(width, round(pw * scale)), max(height, round(ph * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(photo, new, interpolation=interpolation)
    top = int(rng.integers(0, new[1] - height + 1))
    left = int(rng.integers(0, new[0] - width + 1))
    view = resized[top:top + height, left:left + width].astype(np.float32)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = view * rng.uniform(*GAIN_RANGE, size=3).astype(np.float32)
    view += rng.normal(0.0, GRAIN_SIGMA, size=view.shape).astype(np.float32)
    return np.clip(view, 0, 255).astype(np.uint8)


_PHOTOS: list[np.ndarray] = []  # loaded once per process (the pool forks after loading)


def _write_one(task: tuple[int, int, str, float]) -> tuple[int, int, int]:
    index, seed, out, scale = task
    rng = np.random.default_rng([seed, index])
    size = image_size(rng, scale)
    photo = _PHOTOS[int(rng.integers(len(_PHOTOS)))]
    Image.fromarray(make_image(photo, size, rng)).save(out, quality=JPEG_QUALITY)
    return size[0], size[1], os.path.getsize(out)


def _generate(train_dir: Path, num_images: int, seed: int, scale: float, workers: int,
              num_classes: int) -> dict:
    global _PHOTOS
    _PHOTOS = [np.asarray(Image.open(p).convert("RGB")) for p in photo_paths()]
    tasks = []
    for i in range(num_images):
        folder = train_dir / f"class_{i % num_classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks.append((i, seed, str(folder / f"{i:06d}.jpg"), scale))
    # Forked: the workers read the photos from this process's memory (`_PHOTOS`).
    with WorkerPool(multiprocessing.get_context("fork"), workers) as pool:
        sizes = np.array(pool.map(_write_one, tasks, chunksize=16), dtype=np.float64)
    widths, heights, nbytes = sizes.T
    return {"num_images": num_images, "num_classes": num_classes, "jpeg_quality": JPEG_QUALITY,
            "mean_width": round(widths.mean(), 1), "mean_height": round(heights.mean(), 1),
            "max_side": int(max(widths.max(), heights.max())),
            "mean_kb": round(nbytes.mean() / 1e3, 1),
            "bytes_per_pixel": round(float(nbytes.sum() / (widths * heights).sum()), 3),
            "imagenet_bytes_per_pixel": IMAGENET_BYTES_PER_PIXEL,
            "photos": [p.name for p in photo_paths()]}


def ensure_dataset(data_dir, num_images: int = 2000, seed: int = 0, tiny: bool = False,
                   workers: int | None = None, num_classes: int = DEFAULT_CLASSES) -> Dataset:
    """The cached set for these settings; generated (JPEGs, then the .beton) when missing.

    The .beton is written by `write_beton` with the project's defaults (longer side <= 500 px,
    half the records JPEG at quality 90, half raw), as for real ImageNet betons.
    """
    from resnext_lit.data.beton import write_beton

    scale = TINY_SCALE if tiny else 1.0
    workers = workers or os.cpu_count() or 1
    if not 1 <= num_classes <= num_images:
        raise UserError(f"num_classes must be in 1..num_images, got {num_classes}")
    root = Path(data_dir) / (f"imagenet_like_n{num_images}_c{num_classes}_s{seed}"
                             f"{'_tiny' if tiny else ''}")
    train_dir, beton, manifest = root / "train", root / "train.beton", root / "manifest.json"
    settings = {"format": FORMAT, "num_images": num_images, "seed": seed, "scale": scale,
                "num_classes": num_classes}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("settings") == settings and beton.exists():
            return Dataset(root, train_dir, beton, saved["stats"])
    if train_dir.exists():
        import shutil

        shutil.rmtree(train_dir)  # a stale or half-made set: start over
    start = time.perf_counter()
    stats = _generate(train_dir, num_images, seed, scale, workers, num_classes)
    stats["generate_seconds"] = round(time.perf_counter() - start, 1)
    written = write_beton(train_dir, beton, workers=workers, progress=False)
    stats["beton_mb"] = round(beton.stat().st_size / 1e6, 1)
    stats["beton_seconds"] = round(written.seconds, 1)
    from resnext_lit.atomic import write_json_atomic

    write_json_atomic(manifest, {"settings": settings, "stats": stats})
    return Dataset(root, train_dir, beton, stats)
