"""Images held in memory as one uint8 tensor (the digits, CIFAR): the Dataset their DataModules
hand to a DataLoader.

    from resnext_lit.data.in_memory import TensorImages
    TensorImages(images, labels, transform)[0]   # (uint8 [3, H, W], int64 label)
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """uint8 [N, 3, H, W] images and int64 labels held in memory (the digits, CIFAR), with an
    optional per-image transform for training-time augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]
