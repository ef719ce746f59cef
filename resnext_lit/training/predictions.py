"""`predict`: a trained network over images -> `predictions.csv` in the run's folder.

    python -m resnext_lit predict --config configs/demo.yaml \
        --ckpt_path runs/demo/<run_id>/checkpoints/last.ckpt          # the digits' val split
    python -m resnext_lit predict --config configs/demo.yaml \
        --ckpt_path runs/demo/<run_id>/checkpoints/last.ckpt \
        --data resnext_lit.data.predict_folder.PredictFolderDataModule --data.root photos/

One row per image, in the data's order: `path` (the file, or `<split>[<index>]` for images held
in memory or in a .beton), `label` (its class where the data knows it, else empty), then
`top1, prob1, ..., top5, prob5`: the 5 most probable classes (by name where known) and their
softmax probabilities (of the EMA weights, with flip TTA when the model has them, as in
validation). Under DDP every rank writes its rows to a part file; after a barrier rank 0 merges
the parts by sample index, keeping one row per image (a sampler that pads its last shard repeats
images), and removes them. Checkpoints carry the data's class names and evaluation crop
(`eval_data`), so a folder of new images is read and named as the network was validated.
"""

from __future__ import annotations

import csv
import heapq
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import BasePredictionWriter

from ..atomic import atomic_write
from ..data.predict_folder import SKIPPED
from ..errors import UserError

EVAL_DATA = "eval_data"  # checkpoint key: {"classes", "val_res", "val_crop_ratio"}
FROM_FILE = ("num_classes", "mean", "std", "classes", "val_res", "val_crop_ratio")


def eval_data(datamodule) -> dict:
    """What a checkpoint keeps of its data for a later `predict`: class names, val crop. Plain
    str, int and float (jsonargparse's PositiveInt is an int subclass that a weights_only load
    refuses)."""
    classes = getattr(datamodule, "classes", None)
    res = getattr(datamodule, "val_image_size", None) or getattr(datamodule, "image_size", None)
    return {"classes": [str(c) for c in classes] if classes is not None else None,
            "val_res": int(res) if res is not None else None,
            # The digits, CIFAR: the whole image is resized (no crop).
            "val_crop_ratio": float(getattr(datamodule, "val_crop_ratio", 1.0))}


def file_facts(path: str, weights_only: bool = True) -> dict:
    """The network's classes, statistics and val crop as a checkpoint or weights file says them
    (a plain state dict: only its class count, the rows of `fc.weight`)."""
    from ..models.weights import read_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception:  # a legacy (non-zip) file cannot be mapped, or the file is bad
        read_state_dict(path)  # one line for a bad file
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    if not isinstance(obj, dict):
        return {}
    hparams = obj.get("hyper_parameters") or {}
    state = obj.get("state_dict", obj)
    fc = state.get("fc.weight", state.get("model.fc.weight"))
    facts = {"num_classes": hparams.get("num_classes")
             or (fc.shape[0] if torch.is_tensor(fc) else None),
             "mean": hparams.get("mean"), "std": hparams.get("std")}
    return {**facts, **(obj.get(EVAL_DATA) or {})}


def fill_predict_data(config) -> None:
    """Before anything is built: refuse a `predict` without a trained network, and fill the
    data's unset `num_classes`, `mean`, `std`, `classes`, `val_res`, `val_crop_ratio` (those
    of `PredictFolderDataModule`) from the checkpoint or weights file."""
    ckpt, weights = config.get("ckpt_path"), config.model.get("weights")
    if not ckpt and not weights:
        raise UserError("predict needs a trained network: --ckpt_path <checkpoint> or "
                        "--model.weights <file>")
    if ckpt and not Path(ckpt).is_file():
        raise UserError(f"--ckpt_path {ckpt}: predict needs a checkpoint file")
    init = config.data.get("init_args")
    unset = [key for key in FROM_FILE if init is not None and key in init and init[key] is None]
    if not unset:
        return
    path = ckpt or weights
    facts = file_facts(path, weights_only=config.get("weights_only") is not False)
    for key in unset:
        if facts.get(key) is not None:
            value = facts[key]
            setattr(init, key, tuple(value) if key in ("mean", "std") else value)
    if "val_res" in unset and facts.get("val_res") is None:
        print(f"note: {path} does not say its evaluation crop: using ImageNet's (224 px center "
              "crop from 256); --data.val_res and --data.val_crop_ratio set another",
              file=sys.stderr)


def class_names(datamodule, num_classes: int) -> list[str]:
    """The data's class names where it has them for every class, else the class indices."""
    names = getattr(datamodule, "classes", None)
    if names is not None and len(names) == num_classes:
        return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


class PredictionWriter(BasePredictionWriter):
    """Writes `<run folder>/predictions.csv` (the Trainer's `default_root_dir`, which the CLI
    points at the run), atomically, and prints where it went. Active in `predict` only.

    Args:
        filename: the CSV's name in the run folder.
        top_k: classes per row (at most the network's class count).
    """

    def __init__(self, filename: str = "predictions.csv", top_k: PositiveInt = 5):
        super().__init__(write_interval="batch")
        self.filename, self.top_k = filename, top_k
        self._rows: list[tuple] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        # Lightning (2.6.6, `_PredictionLoop._get_batch_indices`) warns that it cannot index a
        # loader that is no torch DataLoader: FFCV's rows are numbered here (`_in_order`).
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched "
                                "from your dataloader: `_LightningLoader`")
        self._rows, self._seen, self._skipped = [], 0, 0
        self._names = class_names(trainer.datamodule, pl_module.hparams.num_classes)
        self._k = min(self.top_k, pl_module.hparams.num_classes)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx) -> None:
        labels = batch[1].tolist()
        indices = list(batch_indices) or self._in_order(trainer, dataloader_idx, len(labels))
        self._seen += len(labels)
        probs, classes = prediction.topk(self._k, dim=1)
        name = getattr(trainer.datamodule, "sample_name", lambda i: f"predict[{i}]")
        for index, label, p, c in zip(indices, labels, probs.tolist(), classes.tolist()):
            if label == SKIPPED:  # named on stderr when it failed to decode
                self._skipped += 1
                continue
            top = [v for j in range(self._k) for v in (self._names[c[j]], f"{p[j]:.6f}")]
            self._rows.append((int(index), name(int(index)),
                               self._names[label] if label >= 0 else "", *top))

    def _in_order(self, trainer, dataloader_idx: int, n: int) -> list[int]:
        """Sample indices for a loader Lightning cannot index (not a torch DataLoader): FFCV's
        val loader walks its `indices` (this rank's records) in order; otherwise 0, 1, ..."""
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        order = getattr(loader, "indices", None)
        if order is None and trainer.world_size > 1:
            raise UserError(f"{type(loader).__name__} gives no sample indices: predict over "
                            "several ranks needs a torch DataLoader or a loader with `indices`")
        if order is None:
            return list(range(self._seen, self._seen + n))
        return [int(i) for i in order[self._seen:self._seen + n]]

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        out = Path(trainer.default_root_dir) / self.filename
        part = out.with_name(f".{out.name}.rank{trainer.global_rank}")
        with atomic_write(part, newline="") as f:
            csv.writer(f).writerows(sorted(self._rows))
        self._rows = []
        skipped = int(trainer.strategy.reduce(torch.tensor(float(self._skipped),
                                                           device=pl_module.device),
                                              reduce_op="sum").item())
        trainer.strategy.barrier("predictions")  # every part is on disk
        if trainer.is_global_zero:
            rows = self._merge(out, [part.with_name(f".{out.name}.rank{rank}")
                                     for rank in range(trainer.world_size)])
            also = f", {skipped} skipped (named above)" if skipped else ""
            print(f"predictions: {rows} images{also} -> {out}", file=sys.stderr)

    def _merge(self, out: Path, parts: list[Path]) -> int:
        """The ranks' sorted parts -> one CSV in sample order, each sample once; the row count."""
        header = ["path", "label", *(f"{col}{j}" for j in range(1, self._k + 1)
                                     for col in ("top", "prob"))]
        files = [part.open(newline="") for part in parts]
        try:
            merged = heapq.merge(*map(csv.reader, files), key=lambda row: int(row[0]))
            written, last = 0, None
            with atomic_write(out, newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                for row in merged:
                    if row[0] != last:  # a padded duplicate of the sample before
                        writer.writerow(row[1:])
                        written, last = written + 1, row[0]
        finally:
            for f in files:
                f.close()
        for part in parts:
            part.unlink()
        return written
