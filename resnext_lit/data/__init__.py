"""DataModules. Every one hands the LightningModule the same batch format:

    (images: torch.uint8 [N, 3, H, W], labels: torch.int64 [N])

Normalisation (the DataModule's `mean` / `std`, on the 0-255 scale) and the float cast happen
on the device, in `ResNeXtModule.on_after_batch_transfer`, so loaders move raw bytes only.
Each DataModule exposes `num_classes`, `mean` and `std` (linked into the model by the CLI) and
`image_size`; the ImageNet ones also `val_image_size` and `val_crop_ratio`.

- DataModules: `ffcv` (betons), `folder` (JPEG folders), `cifar`, `digits`, `synthetic`;
  `predict_folder` (any folder of images, for `predict` only). Each one's `predict_dataloader`
  is its val split, and `sample_name(index)` names an image in `predictions.csv`: its file, or
  `<split>[<index>]`; `classes` (where known) names the classes.
- Shared by them: `in_memory` (`TensorImages`: the digits, CIFAR), `images` (listing and
  decoding), `imagenet_val` (the flat val layout), `distributed` (exact val shards under DDP),
  `workers` (worker counts that fit the machine).
- `beton/`: the `write-beton` command and the sidecar beside each .beton.
"""

from ..errors import UserError

# ImageNet channel statistics on the 0-255 scale (as torchvision's, times 255).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# CIFAR channel statistics, as fb.resnet.torch (the paper's code base) normalises them.
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
CIFAR100_MEAN, CIFAR100_STD = (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)
# Validation crops a 224 center from the image resized to 256 (paper Sec. 4; fb.resnet.torch,
# and ffcv-imagenet's DEFAULT_CROP_RATIO): the default `val_crop_ratio` of the ImageNet modules.
CROP_RATIO = 224 / 256
# The Inception crop the paper trains with (Sec. 4, after Szegedy et al. 2015); also FFCV's.
INCEPTION_SCALE = (0.08, 1.0)  # share of the image area
INCEPTION_RATIO = (3 / 4, 4 / 3)  # aspect ratio range


def check_args(crop_scale, val_crop_ratio: float, **positive: int | None) -> None:
    """One-line `UserError`s for the arguments both ImageNet DataModules take (FFCV, folder).

    `positive`: the arguments typed PositiveInt, by name (None: unset, as val_batch_size).
    jsonargparse enforces that type for configs and the command line; this is the one check
    for Python callers (`FFCVDataModule(..., val_res=0)`, the benchmarks)."""
    for name, value in positive.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"data.{name} must be a positive integer, got {value!r}")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise UserError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    if not 0 < val_crop_ratio <= 1:
        raise UserError(f"data.val_crop_ratio must be in (0, 1], got {val_crop_ratio!r}")
