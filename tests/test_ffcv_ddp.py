"""FFCVDataModule under real 2-process DDP on CPU (gloo), with the repo's ResNeXtModule.

    .venv/bin/python -m pytest -q tests/test_ffcv_ddp.py

Each image is a flat colour that encodes its record index, so every rank can write down which
records it saw, in which order. Asserted: training shards are disjoint and cover the split in
every epoch and reshuffle between epochs; validation sees every image exactly once across the
ranks (no FFCV padding duplicates, no dropped tail); the logged, rank-synced `val/top1_err`
equals the error one process computes over the whole split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from resnext_lit.data.beton import write_beton
from resnext_lit.data.images import export_imagefolder

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 64, 37  # 64 = 2 ranks x 4 batches of 8; 37 is odd: padding would show
NUM_CLASSES, BATCH, EPOCHS, RES = 4, 8, 2, 32
LEVELS, LEVEL_STEP, LEVEL_OFFSET = 12, 20, 10  # index i -> red/green levels 10, 30, ..., 230
DDP_TIMEOUT_S = 420

SCRIPT = textwrap.dedent("""
    import json, sys
    import lightning as L, torch
    from resnext_lit.data.ffcv import FFCVDataModule
    from resnext_lit.training.module import ResNeXtModule

    train, val, out, step, offset, levels = sys.argv[1:7]
    step, offset, levels = int(step), int(offset), int(levels)

    def indices(images):  # uint8-scale images -> record index from their flat colour
        rg = ((images.float().mean((2, 3))[:, :2] - offset) / step).round().long()
        return (rg[:, 1] * levels + rg[:, 0]).tolist()

    class Record(L.Callback):
        def __init__(self):
            self.seen = {"train": {}, "val": {}}
        def _log(self, split, trainer, module, batch):
            images = batch[0] * module.std + module.mean  # the module normalised it already
            self.seen[split].setdefault(trainer.current_epoch, []).extend(indices(images))
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._log("train", trainer, module, batch)
        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self._log("val", trainer, module, batch)

    data = dict(batch_size=8, res=32, val_res=32, num_workers=1, seed=3)
    model = ResNeXtModule(arch="resnext50_32x4d", cardinality=2, bottleneck_width=2,
                          num_classes=4, lr=0.5, milestones=[1])
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[record])
    trainer.fit(model, FFCVDataModule(train, val, **data))
    result = {"seen": record.seen, "world": trainer.world_size}
    rank = trainer.global_rank
    torch.distributed.destroy_process_group()  # else the DataModule shards val for this rank
    if rank == 0:
        result["logged_err"] = float(trainer.callback_metrics["val/top1_err"])
        model.eval()
        wrong = total = 0
        with torch.no_grad():  # one process, the whole split, no Lightning
            for images, labels in FFCVDataModule(train, val, **data).val_dataloader():
                images, labels = model.on_after_batch_transfer((images, labels), 0)
                wrong += (model(images).argmax(1) != labels).sum().item()
                total += len(labels)
        result["single_process_err"] = 100 * wrong / total
        result["single_process_total"] = total
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)
""")


def _colour_betons(root: Path) -> tuple[Path, Path]:
    classes = [f"c{k}" for k in range(NUM_CLASSES)]
    betons = []
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        index = np.arange(count)
        red = LEVEL_OFFSET + LEVEL_STEP * (index % LEVELS)
        green = LEVEL_OFFSET + LEVEL_STEP * (index // LEVELS)
        colours = np.stack([red, green, np.full(count, 128)], 1).astype(np.uint8)
        images = np.broadcast_to(colours[:, None, None, :], (count, 40, 48, 3)).copy()
        # Labels sorted by index keep record order == index order (ImageFolder order).
        labels = index * NUM_CLASSES // count
        folder = export_imagefolder(images, labels, classes, root / split)
        betons.append(write_beton(folder, root / f"{split}.beton", workers=2, progress=False).beton)
    return betons[0], betons[1]


@pytest.mark.slow
def test_ddp_train_shards_and_exact_validation(tmp_path):
    train, val = _colour_betons(tmp_path)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(script), str(train), str(val), str(tmp_path),
                          str(LEVEL_STEP), str(LEVEL_OFFSET), str(LEVELS)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    orders = {}
    for epoch in map(str, range(EPOCHS)):
        train_seen = [r["seen"]["train"][epoch] for r in ranks]
        assert [len(s) for s in train_seen] == [NUM_TRAIN // 2] * 2
        assert not set(train_seen[0]) & set(train_seen[1])  # disjoint shards
        assert sorted(train_seen[0] + train_seen[1]) == list(range(NUM_TRAIN))
        orders[epoch] = train_seen
        val_seen = [r["seen"]["val"][epoch] for r in ranks]
        assert val_seen[0] + val_seen[1] == list(range(NUM_VAL))  # once each, contiguous shards
    for rank in range(2):  # every epoch reshuffles, on every rank
        assert orders["0"][rank] != orders["1"][rank]
    assert set(orders["0"][0]) != set(orders["1"][0])  # the shards themselves change

    lead = ranks[0]
    assert lead["single_process_total"] == NUM_VAL
    assert lead["logged_err"] == pytest.approx(lead["single_process_err"], abs=1e-4)
