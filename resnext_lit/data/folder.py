"""`ImageFolderDataModule`: JPEG folders -> the same crops and batches as `FFCVDataModule`, with
torchvision transforms and a torch DataLoader. For users without betons, and the baseline the
FFCV path is benchmarked against.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml \
        --config configs/data/imagenet_folder.yaml

    dm = ImageFolderDataModule("~/imagenet/train", "~/imagenet/val",
                               val_labels="~/imagenet/LOC_val_solution.csv")

Train: RandomResizedCrop (area 8%-100%, aspect 3/4-4/3) at `res` + horizontal flip. Val: the
center square of side `val_crop_ratio` (default 224/256) x the shorter side, resized to
`val_res` (FFCV's center crop, same geometry). Batches: uint8 [N, 3, H, W] and int64 [N]. Class
indices are the train folder's sorted names; val may be an ImageFolder tree or ImageNet's flat
layout (`val_labels`). Files are decoded by `images.load_rgb`, as the writer does; unlike the
writer, a broken file stops the run (screening 1.28M files at every start would cost minutes),
naming the file.
Under DDP the val split is sharded exactly (`distributed.ExactShardSampler`), like the FFCV module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..errors import UserError
from . import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_RATIO, INCEPTION_SCALE, check_args
from .distributed import ExactShardSampler, rank_and_world
from .imagenet_val import flat_val_samples, read_val_labels
from .images import BadImage, list_classes, list_image_folder, load_rgb
from .order import train_loader
from .workers import clip_workers, shield_from_stop_signals


class CenterCropRatio(torch.nn.Module):
    """The center square whose side is `ratio` x the shorter side: FFCV's `get_center_crop`."""

    def __init__(self, ratio: float = CROP_RATIO):
        super().__init__()
        self.ratio = ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = int(self.ratio * min(height, width))
        top, left = (height - side) // 2, (width - side) // 2
        return image[..., top:top + side, left:left + side]


def train_transform(res: int, scale=INCEPTION_SCALE, flip: bool = True) -> v2.Compose:
    ops = [v2.RandomResizedCrop(res, scale=scale, ratio=INCEPTION_RATIO, antialias=True)]
    return v2.Compose(ops + ([v2.RandomHorizontalFlip()] if flip else []))


def val_transform(val_res: int, ratio: float = CROP_RATIO) -> v2.Compose:
    return v2.Compose([CenterCropRatio(ratio), v2.Resize((val_res, val_res), antialias=True)])


class ImageFiles(Dataset):
    """(uint8 [3, H, W] after `transform`, label) for a list of (path, label)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            image = torch.from_numpy(load_rgb(path)).permute(2, 0, 1)
        except BadImage as err:
            raise RuntimeError(f"{path}: {err} (the .beton writer skips and reports such "
                               "files)") from None
        return self.transform(image), label


class ImageFolderDataModule(LightningDataModule):
    """Train/val image folders with the paper's crops.

    Args:
        train_dir: ImageFolder tree ROOT/<class>/<image>; its sorted folder names are the classes.
        val_dir: ImageFolder tree with (a subset of) the same class folders, or ImageNet's flat
            val folder when `val_labels` is given.
        val_labels, synsets: ImageNet ground truth (see `resnext_lit.data.imagenet_val`).
        batch_size: images per process per step (derived from the recipe's global batch by
            the CLI); val_batch_size defaults to it.
        res, val_res, val_crop_ratio, crop_scale, flip: as `FFCVDataModule` (val_crop_ratio:
            the val center square's side / the shorter side; 224/256 = 224 from 256).
        num_workers: DataLoader worker processes, capped at the usable cores.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # linked into the model, which normalises

    def __init__(self, train_dir: str, val_dir: str, val_labels: str | None = None,
                 synsets: str | None = None, batch_size: PositiveInt = 256,
                 val_batch_size: PositiveInt | None = None, res: PositiveInt = 224,
                 val_res: PositiveInt = 224, val_crop_ratio: float = CROP_RATIO,
                 crop_scale: tuple[float, float] = INCEPTION_SCALE, flip: bool = True,
                 num_workers: NonNegativeInt = 8):
        super().__init__()
        check_args(crop_scale, val_crop_ratio, res=res, val_res=val_res,
                            batch_size=batch_size, val_batch_size=val_batch_size)
        self.save_hyperparameters()
        self.classes: list[str] = list_classes(train_dir)  # a directory listing: cheap
        if val_labels is None:
            list_classes(val_dir)  # fail now, not after the first epoch, on a missing val tree
        elif not Path(val_dir).expanduser().is_dir():
            raise UserError(f"validation folder {val_dir} does not exist or is not a folder")
        self.num_classes: int = len(self.classes)
        self.image_size: int = res
        self.val_image_size: int = val_res
        self.val_crop_ratio: float = val_crop_ratio
        self.batch_size: int = batch_size
        self.num_workers = clip_workers(num_workers)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            self.train_set = ImageFiles(list_image_folder(hp.train_dir, self.classes),
                                        train_transform(hp.res, tuple(hp.crop_scale), hp.flip))
        if hp.val_labels is None:
            val = list_image_folder(hp.val_dir, self.classes)
        else:
            labels = read_val_labels(hp.val_labels, hp.synsets)
            val, _ = flat_val_samples(hp.val_dir, labels, self.classes)
        self.val_set = ImageFiles(val, val_transform(hp.val_res, hp.val_crop_ratio))

    def _workers(self) -> dict:
        return dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                    pin_memory=torch.cuda.is_available(),
                    worker_init_fn=shield_from_stop_signals)

    def _loader(self, dataset, batch_size: int, **kwargs) -> DataLoader:
        # batch_size by keyword: Lightning re-creates a predict loader with its own batch
        # sampler, and refuses a positional batch_size beside it.
        return DataLoader(dataset, batch_size=batch_size, **self._workers(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.trainer, **self._workers())

    def val_dataloader(self) -> DataLoader:
        rank, world = rank_and_world(self.trainer)
        sampler = ExactShardSampler(self.val_set, world, rank) if world > 1 else None
        return self._loader(self.val_set, self.hparams.val_batch_size or self.batch_size,
                            sampler=sampler)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader  # the val split, one CSV row per file

    def sample_name(self, index: int) -> str:
        return self.val_set.samples[index][0]
