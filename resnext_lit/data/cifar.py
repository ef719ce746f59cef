"""CIFAR-10 and CIFAR-100 from their official "python version" folders, with the paper's
augmentation (Sec. 5.3): a 32x32 crop from the image zero-padded to 40x40, and a random flip.

    python -m resnext_lit fit --config configs/cifar_paper.yaml --data.init_args.root ~/data/cifar
    # reads ~/data/cifar/cifar-10-batches-py/ (from cifar-10-python.tar.gz, extracted), or
    # ~/data/cifar/cifar-100-python/ with --data.init_args.num_classes 100

Nothing is downloaded: extract the archives from https://www.cs.toronto.edu/~kriz/cifar.html
yourself. The paper reports test error, so validation is the 10,000-image test set, in file
order. The files are pickles: they are read with an unpickler that builds NumPy arrays and
nothing else, and checked against torchvision's MD5 list of the official release (a mismatch
warns: such runs are not comparable to the paper's figures).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import v2

from ..errors import UserError
from . import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .distributed import ExactShardSampler, rank_and_world
from .in_memory import TensorImages
from .order import train_loader
from .workers import clip_workers, shield_from_stop_signals

IMAGE_SIZE = 32
# Per class count: the folder, its train and test files, the label key, channel statistics.
RELEASES = {10: (CIFAR10, "labels", CIFAR10_MEAN, CIFAR10_STD),
            100: (CIFAR100, "fine_labels", CIFAR100_MEAN, CIFAR100_STD)}
# What NumPy pickles an array with (NumPy 1.x and 2.x spell the module differently), and how
# Python 3 writes bytes at protocol 2 (a copy of the files re-saved from Python 3).
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"),
                 ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    """A pickle can run any code on load; CIFAR's hold only dicts, lists and NumPy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not CIFAR data")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR file -> (uint8 [N, 3, 32, 32], int64 [N]). Rows hold the red, green, blue
    planes of a 32x32 image in turn, so a reshape gives NCHW without copying."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="latin1").load()  # written by Python 2's cPickle
        # A copy re-pickled after loading with encoding="bytes" has bytes keys (b"data").
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except KeyError as err:
        raise UserError(f"{path} is not a CIFAR batch file: it has no {err} entry") from None
    except (OSError, EOFError, AttributeError, TypeError, ValueError,
            pickle.UnpicklingError) as err:
        raise UserError(f"{path} is not a CIFAR batch file: {err}") from None
    if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE ** 2 or len(data) != len(labels):
        raise UserError(f"{path} is not a CIFAR batch file: data {data.shape}, "
                        f"{len(labels)} labels")
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


class CIFARDataModule(LightningDataModule):
    """CIFAR-10/100 in the repo's batch format (uint8 NCHW, int64 labels).

    Args:
        root: the folder holding `cifar-10-batches-py/` or `cifar-100-python/`.
        num_classes: 10 (CIFAR-10) or 100 (CIFAR-100); linked into the model by the CLI.
        batch_size: images per process per step (paper: 128 in all, over 8 GPUs).
        padding: zero padding before the 32x32 random crop (paper: 4, i.e. from 40x40).
        flip: random horizontal flip (paper: yes).
        num_workers: DataLoader worker processes, capped at the usable cores.

    `mean` and `std` are fb.resnet.torch's statistics for the dataset (the paper's code base,
    Sec. 4); the CLI links them into the model, which normalises on the device.
    """

    image_size = IMAGE_SIZE

    def __init__(self, root: str = "data/cifar", num_classes: int = 10,
                 batch_size: PositiveInt = 128, padding: NonNegativeInt = 4, flip: bool = True,
                 num_workers: NonNegativeInt = 4):
        super().__init__()
        if num_classes not in RELEASES:  # a plain int: Lightning wants the model's type
            raise UserError(f"data.num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), "
                            f"got {num_classes}")
        self.save_hyperparameters()
        release, self.label_key, self.mean, self.std = RELEASES[num_classes]
        self.folder = Path(root).expanduser() / release.base_folder
        # (file name, MD5 of the official release) per split, from torchvision's list.
        self.files = {"train": release.train_list, "test": release.test_list}
        missing = [name for files in self.files.values() for name, _ in files
                   if not (self.folder / name).is_file()]
        if missing:  # now, before any model is built
            raise UserError(f"{self.folder / missing[0]} does not exist: extract "
                            f"cifar-{num_classes}-python.tar.gz under data.root={root}")
        self.num_classes, self.batch_size = num_classes, batch_size
        self.num_workers = clip_workers(num_workers)
        self.classes = self._class_names(release)

    def _class_names(self, release) -> list[str] | None:
        """The release's names ("airplane", ...) from its meta file; None without one."""
        path = self.folder / release.meta["filename"]
        try:
            with open(path, "rb") as f:
                names = [str(n) for n in _ArraysOnly(f, encoding="latin1").load()[
                    release.meta["key"]]]
        except (OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
            return None
        return names if len(names) == self.num_classes else None

    def _check_release(self) -> None:
        changed = [name for files in self.files.values() for name, md5 in files
                   if not check_integrity(str(self.folder / name), md5)]
        if changed:
            warnings.warn(f"{self.folder / changed[0]} differs from the official "
                          f"CIFAR-{self.num_classes} release (MD5): results are not comparable "
                          "to the paper's", stacklevel=2)

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_batch(self.folder / name, self.label_key) for name, _ in self.files[split]]
        images, labels = (torch.from_numpy(np.concatenate(p)) for p in zip(*parts))
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise UserError(f"{self.folder}: labels outside 0..{self.num_classes - 1} in "
                            f"the {split} files")
        return images, labels

    def setup(self, stage: str) -> None:
        self._check_release()
        if stage == "fit":
            augment = [v2.RandomCrop(IMAGE_SIZE, padding=self.hparams.padding)]
            if self.hparams.flip:
                augment.append(v2.RandomHorizontalFlip())
            self.train_set = TensorImages(*self._load("train"), v2.Compose(augment))
        self.val_set = TensorImages(*self._load("test"))

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.trainer,
                            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                            worker_init_fn=shield_from_stop_signals)

    def val_dataloader(self) -> DataLoader:
        rank, world = rank_and_world(self.trainer)
        sampler = ExactShardSampler(self.val_set, world, rank) if world > 1 else None
        # batch_size by keyword: Lightning re-creates a predict loader (see `digits`).
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          worker_init_fn=shield_from_stop_signals)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader  # the test set, which the paper reports

    def sample_name(self, index: int) -> str:
        return f"test[{index}]"
