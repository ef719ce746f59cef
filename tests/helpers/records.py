"""Run records made in a test, in the shape training writes them (results.json): for the tables,
the claims and the summaries.

    from helpers.records import record
    record("resnext50_32x4d", 22.2, seed=1)     # a finished ImageNet run of the paper's recipe
"""

from __future__ import annotations

from resnext_lit.models import model_entry

IMAGENET = {"class_path": "resnext_lit.data.ffcv.FFCVDataModule"}
CIFAR = {"class_path": "resnext_lit.data.cifar.CIFARDataModule"}
DIGITS = {"class_path": "resnext_lit.data.digits.DigitsDataModule"}


def record(arch, top1, top5=None, status="finished", seed=0, recipe="imagenet_paper",
           data=IMAGENET, num_classes=1000, stage="fit", max_epochs=100, global_batch=None,
           resolution=None, **model):
    """A results.json record; ImageNet runs default to the paper's recipe (global batch 256 on
    8 GPUs, 224 px train and val, crop 224/256), CIFAR runs to Sec. 5.3's (128, 32 px)."""
    entry = model_entry(arch)
    stem = "imagenet" if entry["dataset"] == "imagenet" else "cifar"
    model = {"depth": entry["depth"], "cardinality": entry["cardinality"],
             "bottleneck_width": entry["bottleneck_width"], "form": "c", "stem": stem,
             "num_classes": num_classes, "params": 25_000_000, "macs": 4_200_000_000, **model}
    imagenet = data is IMAGENET
    dataset = "imagenet" if imagenet else "digits" if data is DIGITS else f"cifar{num_classes}"
    size, batch = (224, 256) if imagenet else (32, 128)
    world = 8 if imagenet else 1
    global_batch = global_batch or batch
    epochs = [] if stage == "validate" else [
        {"epoch": e, "train/top1_err": 80.0 - 20 * e, "val/top1_err": 70.0 - 15 * e}
        for e in range(min(3, max_epochs))]
    rec = {"status": status, "stage": stage, "arch": arch, "model": model, "dataset": dataset,
           "recipe": recipe, "seed": seed,
           "config": {"data": data, "trainer": {"max_epochs": max_epochs}},
           "max_epochs": max_epochs,
           "scale": {"world_size": world, "per_device_batch": global_batch // world,
                     "accumulate_grad_batches": 1, "global_batch": global_batch, "lr": 0.1},
           "resolution": {"train": size, "train_final": size, "val": size,
                          "val_crop_ratio": 0.875 if imagenet else None, **(resolution or {})},
           "epochs": epochs, "images_per_s": 100.0,
           "final": {"val/top1_err": top1, "val/top5_err": top5} if top1 is not None else None,
           "best": None if stage == "validate" else {"val/top1_err": top1}}
    if stage == "validate":
        rec["checkpoint"] = f"runs/{arch}/checkpoints/last.ckpt"
    return rec
