"""Random images and labels of any size and class count: smoke runs and benchmarks.

    python -m resnext_lit fit --config configs/demo.yaml \
        --data resnext_lit.data.synthetic.SyntheticDataModule --data.image_size 64
"""

from __future__ import annotations

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from ..errors import UserError
from . import IMAGENET_MEAN, IMAGENET_STD
from .order import train_loader
from .workers import clip_workers


class SyntheticDataModule(LightningDataModule):
    """Fixed random uint8 images (seeded, so every run and rank sees the same set)."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # linked into the model, which normalises

    def __init__(self, num_classes: int = 10, image_size: PositiveInt = 32,
                 num_train: PositiveInt = 256, num_val: PositiveInt = 64,
                 batch_size: PositiveInt = 32, num_workers: NonNegativeInt = 0,
                 data_seed: int = 0):
        super().__init__()
        if num_classes < 1:  # a plain int: Lightning wants the model's and data's types equal
            raise UserError(f"data.num_classes must be >= 1, got {num_classes}")
        self.save_hyperparameters()
        self.num_classes, self.image_size, self.batch_size = num_classes, image_size, batch_size
        self.num_workers = clip_workers(num_workers)

    def _dataset(self, n: int, offset: int) -> TensorDataset:
        g = torch.Generator().manual_seed(self.hparams.data_seed + offset)
        size = self.image_size
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        return TensorDataset(images, torch.randint(0, self.num_classes, (n,), generator=g))

    def train_dataloader(self) -> DataLoader:
        return train_loader(self._dataset(self.hparams.num_train, 0), self.batch_size,
                            self.trainer, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        # batch_size by keyword: Lightning re-creates a predict loader (see `digits`).
        return DataLoader(self._dataset(self.hparams.num_val, 1), batch_size=self.batch_size,
                          num_workers=self.num_workers)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader

    def sample_name(self, index: int) -> str:
        return f"val[{index}]"
