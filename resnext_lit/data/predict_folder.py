"""`PredictFolderDataModule`: any folder of images (no labels, sub-folders included) for `predict`.

    python -m resnext_lit predict --config configs/demo.yaml \
        --ckpt_path runs/demo/<run_id>/checkpoints/last.ckpt \
        --data resnext_lit.data.predict_folder.PredictFolderDataModule --data.root photos/

Each image gets the model's evaluation crop: the center square of side `val_crop_ratio` x the
shorter side, resized to `val_res` (the val transform of `ImageFolderDataModule`, paper Sec. 4's
224 crop from 256 by default). With `--ckpt_path` (or a checkpoint as `--model.weights`) the CLI
takes `num_classes`, `mean`, `std`, the class names and the val crop from the checkpoint
(`resnext_lit.training.predictions.fill_predict_data`); with a plain state dict (torchvision's)
the class count is its fc's, and ImageNet's statistics, crop and class names apply.

A file that does not decode is named on stderr in one line (`skipped PATH: reason`) and left out
of the predictions, never a crash: its batch slot carries the label `SKIPPED`. Labels are
otherwise `UNLABELLED`, so batches keep the repo's (uint8 images, int64 labels) format.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from . import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from .folder import val_transform
from .images import IMAGE_EXTENSIONS, BadImage, image_files, load_rgb
from .workers import clip_workers, shield_from_stop_signals

UNLABELLED, SKIPPED = -1, -2  # labels of an image without a class, and of one that failed
IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in torchvision's (sorted WNID) index order, as shipped
    with torchvision (no download)."""
    from torchvision.models import ResNeXt50_32X4D_Weights

    return list(ResNeXt50_32X4D_Weights.IMAGENET1K_V1.meta["categories"])


class UnlabelledImages(Dataset):
    """(uint8 [3, S, S], UNLABELLED) per file; (zeros, SKIPPED) for a file that fails."""

    def __init__(self, paths: list[str], transform, size: int):
        self.paths, self.transform, self.size = paths, transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            image = torch.from_numpy(load_rgb(path)).permute(2, 0, 1)
            return self.transform(image), UNLABELLED
        except (BadImage, RuntimeError, ValueError) as err:  # also a crop of a 1-pixel image
            print(f"skipped {path}: {err}", file=sys.stderr, flush=True)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), SKIPPED


class PredictFolderDataModule(LightningDataModule):
    """Every image file under `root` (recursive, sorted), for `predict` only.

    Args:
        root: the folder; files are images by their extension (torchvision's list).
        batch_size: images per process per step.
        val_res, val_crop_ratio: the evaluation crop (as `ImageFolderDataModule`); None: the
            checkpoint's, else ImageNet's 224 and 224/256.
        num_classes, mean, std, classes: the network's; None: the checkpoint's or weights
            file's (the CLI fills them in). Classes: a list or a text file of names; for 1000
            classes without names, ImageNet's.
        num_workers: DataLoader worker processes, capped at the usable cores.
    """

    def __init__(self, root: str, batch_size: PositiveInt = 64, val_res: PositiveInt | None = None,
                 val_crop_ratio: float | None = None, num_classes: PositiveInt | None = None,
                 mean: tuple[float, float, float] | None = None,
                 std: tuple[float, float, float] | None = None,
                 classes: list[str] | str | None = None, num_workers: NonNegativeInt = 4):
        super().__init__()
        from .beton.sidecar import resolve_classes

        # The network's own values, in the module's hparams already: Lightning refuses a key in
        # both whose type differs (a list here, a tuple there).
        self.save_hyperparameters(ignore=["num_classes", "mean", "std"])
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise UserError(f"data.root {root}: no such folder")
        self.paths = image_files(str(folder))  # a listing, cheap: before any model is built
        if not self.paths:
            raise UserError(f"data.root {root} holds no image files ({'/'.join(IMAGE_EXTENSIONS)})")
        self.classes = resolve_classes(classes) if classes is not None else None
        if num_classes is None:
            if self.classes is None:
                raise UserError("data.num_classes (or data.classes) is needed without a "
                                "checkpoint or weights file to take it from")
            num_classes = len(self.classes)
        if self.classes is None and num_classes == IMAGENET_CLASSES:
            self.classes = imagenet_class_names()
        if self.classes is not None and len(self.classes) != num_classes:
            raise UserError(f"data.classes names {len(self.classes)} classes but the network "
                            f"has {num_classes}")
        self.num_classes = num_classes
        self.mean, self.std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        self.val_image_size = self.image_size = val_res or 224
        self.val_crop_ratio = val_crop_ratio or CROP_RATIO
        if not 0 < self.val_crop_ratio <= 1:
            raise UserError(f"data.val_crop_ratio must be in (0, 1], got {val_crop_ratio!r}")
        self.batch_size = batch_size
        self.num_workers = clip_workers(num_workers)

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise UserError("PredictFolderDataModule has no labels: use it with `predict`")
        transform = val_transform(self.val_image_size, self.val_crop_ratio)
        self.predict_set = UnlabelledImages(self.paths, transform, self.val_image_size)

    def sample_name(self, index: int) -> str:
        return self.paths[index]

    def predict_dataloader(self) -> DataLoader:
        # Keyword arguments: Lightning re-creates a predict loader with its own batch sampler
        # and refuses a positional batch_size next to it.
        return DataLoader(self.predict_set, batch_size=self.batch_size,
                          num_workers=self.num_workers, worker_init_fn=shield_from_stop_signals)
