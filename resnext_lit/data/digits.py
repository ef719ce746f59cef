"""The embedded real dataset: scikit-learn's 1,797 handwritten digit scans, no download.

    python -m resnext_lit fit --config configs/demo.yaml
    python -m resnext_lit.data.digits runs/demo/data   # the same split as JPEG ImageFolders

The 8x8 scans (UCI optdigits, 16 grey levels) are upsampled to 32x32 RGB uint8, so a CIFAR-stem
ResNeXt sees them as it would see CIFAR. The train/val split is stratified and fixed by
`split_seed` (not the run's seed: every run validates on the same images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..errors import UserError
from . import IMAGENET_MEAN, IMAGENET_STD
from .in_memory import TensorImages
from .order import train_loader
from .workers import clip_workers, shield_from_stop_signals

CLASSES = tuple(str(i) for i in range(10))


def split(labels: torch.Tensor, val_fraction: float, seed: int):
    """Fixed stratified (train, val) indices."""
    return train_test_split(torch.arange(len(labels)), stratify=labels, test_size=val_fraction,
                            random_state=seed)


def digits_uint8(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (uint8 [N, 3, S, S], int64 [N])."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255 / 16)
    images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(LightningDataModule):
    """Digits in the repo's batch format; light augmentation (random crop with padding, no flip:
    a mirrored digit is another glyph)."""

    num_classes, classes = len(CLASSES), CLASSES
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # any fixed statistics do for the demo

    def __init__(self, batch_size: PositiveInt = 64, image_size: PositiveInt = 32,
                 val_fraction: float = 0.2, padding: NonNegativeInt = 4,
                 num_workers: NonNegativeInt = 0, split_seed: int = 0):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.batch_size, self.image_size = batch_size, image_size
        self.num_workers = clip_workers(num_workers)

    def setup(self, stage: str) -> None:
        images, labels = digits_uint8(self.image_size)
        train, val = split(labels, self.hparams.val_fraction, self.hparams.split_seed)
        crop = v2.RandomCrop(self.image_size, padding=self.hparams.padding)
        self.train_set = TensorImages(images[train], labels[train], crop)
        self.val_set = TensorImages(images[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.trainer,
                            num_workers=self.num_workers, worker_init_fn=shield_from_stop_signals)

    def val_dataloader(self) -> DataLoader:
        # batch_size by keyword: Lightning re-creates a predict loader with its own batch
        # sampler, and refuses a positional batch_size beside it.
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          worker_init_fn=shield_from_stop_signals)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader  # the val split, one CSV row per image

    def sample_name(self, index: int) -> str:
        return f"val[{index}]"


def export(root: str, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> None:
    """Write the split as JPEG ImageFolders ROOT/train and ROOT/val (for `write-beton`)."""
    from pathlib import Path

    from .images import export_imagefolder
    images, labels = digits_uint8(image_size)
    for name, idx in zip(("train", "val"), split(labels, val_fraction, seed)):
        export_imagefolder(images[idx].permute(0, 2, 3, 1).numpy(), labels[idx].numpy(),
                           list(CLASSES), Path(root) / name)


if __name__ == "__main__":
    import sys
    export(sys.argv[1])
