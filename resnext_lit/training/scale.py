"""The recipe's global batch on 1, 8 or 64 GPUs: per-device batch, learning rate, start-up line.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --trainer.devices 8
    # scale: 8 processes x 32 images x 1 accumulation = global batch 256 (recipe: 256),
    #        lr 0.1, 16-mixed

A recipe states the paper's global batch (`global_batch_size`: 256 for ImageNet, Sec. 4; 128 for
CIFAR, Sec. 5.3); the images per device follow from the world size once it is known:
global / (devices x nodes x gradient accumulation). So the same config trains the paper's
recipe on one GPU (with accumulation) or on 64. The learning rate is stated per 256 images and
scaled linearly by the global batch (Goyal et al. 2017), so it too never changes with the GPU
count. What does change is the batch BatchNorm normalises over (the per-device batch); the
paper's was 32 images per GPU (8 GPUs), and the start-up line says when ours differs.
"""

from __future__ import annotations

from ..errors import UserError

REFERENCE_BATCH = 256  # the paper's lr 0.1 is for 256 images per step (Sec. 4, Goyal et al.)
SCALE_KEYS = ("world_size", "per_device_batch", "accumulate_grad_batches", "global_batch", "lr")


def per_device_batch(global_batch: int, world_size: int, accumulate: int) -> int:
    """Images per device and step for `global_batch`; one-line UserError if it does not divide."""
    share = world_size * accumulate
    if global_batch % share:
        raise UserError(f"global_batch_size={global_batch} does not divide over {world_size} "
                        f"process(es) x {accumulate} accumulation step(s); choose a multiple "
                        f"of {share} or change the devices")
    return global_batch // share


def peak_lr(lr_per_256: float, global_batch: int) -> float:
    """The optimiser's learning rate: the recipe's lr per 256 images, scaled linearly."""
    return lr_per_256 * global_batch / REFERENCE_BATCH


def apply_global_batch(datamodule, global_batch: int | None, world_size: int,
                       accumulate: int) -> None:
    """Set `datamodule.batch_size` (images per device) from the recipe's global batch.

    With a global batch, the per-device batch is always derived (the start-up line says what it
    became); `--global_batch_size null` keeps the DataModule's own `batch_size` instead.
    """
    if global_batch is None:
        return
    derived = per_device_batch(global_batch, world_size, accumulate)
    if getattr(datamodule, "batch_size", None) is None:
        raise UserError(f"global_batch_size needs a DataModule with `batch_size`; "
                        f"{type(datamodule).__name__} has none")
    datamodule.batch_size = derived


def scale_of(world_size: int, per_device: int, accumulate: int, lr_per_256: float) -> dict:
    """The run's scale as results.json and W&B record it (`SCALE_KEYS`)."""
    global_batch = per_device * world_size * accumulate
    return dict(zip(SCALE_KEYS, (world_size, per_device, accumulate, global_batch,
                                 peak_lr(lr_per_256, global_batch))))


def describe(scale: dict, precision: str, recipe_batch: int | None,
             paper_per_device: int | None) -> str:
    """The start-up line: what actually runs."""
    recipe = f" (recipe: {recipe_batch})" if recipe_batch else " (per-device batch given)"
    line = (f"scale: {scale['world_size']} process(es) x {scale['per_device_batch']} images x "
            f"{scale['accumulate_grad_batches']} accumulation = global batch "
            f"{scale['global_batch']}{recipe}, lr {scale['lr']:.4g}, {precision}")
    if paper_per_device and scale["per_device_batch"] != paper_per_device:
        line += (f"; BatchNorm sees {scale['per_device_batch']} images per device "
                 f"(paper: {paper_per_device})")
    return line


def run_scale(trainer, datamodule, lr_per_256: float) -> dict:
    """`scale_of` for a Trainer and its DataModule (whose `batch_size` is per device)."""
    return scale_of(trainer.world_size, datamodule.batch_size, trainer.accumulate_grad_batches,
                    lr_per_256)
