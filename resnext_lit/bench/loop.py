"""`python -m resnext_lit bench loop [--tiny]`: `Trainer.fit` vs a hand-written training loop.

    python -m resnext_lit bench loop --out runs/bench/loop.json

Both train the same `ResNeXtModule` network on the same pre-made uint8 batches held in memory
(`InMemoryBatches`: no decoding, so only the loops differ), normalised on the device the same
way, with the same SGD, LR schedule and precision. The raw loop does the module's own per-step
work (normalise, forward, cross-entropy, train-accuracy update, backward, SGD step, schedule
step); what it leaves out is Lightning itself: hooks, `self.log`, the loop machinery.

Timing points are identical on both sides (`StepClock`, ticked after every optimiser step; a
Lightning callback on one side, a call in the loop on the other): the first `warmup_steps` of
each run are excluded, then the images/s of the timed steps is the run's figure. Runs alternate
(raw, Lightning, Lightning, raw, ...); the result is the median of >= 5 runs each, and their
ratio. Goal (issue 11): Lightning >= 0.97x the raw loop. `gpu.py` reuses these pieces on a GPU.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from lightning import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from resnext_lit.training.scale import peak_lr
from resnext_lit.training.schedules import lr_factor

from .common import Report, interleave, torch_threads

# CPU-sized: a ResNeXt-11 (CIFAR stem, one block per stage) of C=4 paths of d=4, 16 px images.
NORMAL = dict(arch="resnext29_8x64d", depth=11, cardinality=4, bottleneck_width=4,
              image_size=16, batch_size=16, num_classes=10, warmup_steps=3, timed_steps=24,
              repeats=11, warmup=1, threads=1)
TINY = dict(NORMAL, cardinality=2, image_size=8, batch_size=8, warmup_steps=2, timed_steps=4,
            repeats=5)
RAW_STEP = ["normalise on device", "forward", "cross-entropy", "train accuracy update",
            "backward", "SGD step", "LR schedule step"]


class _Cycle(Dataset):
    def __init__(self, batches: list, length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.batches[i % len(self.batches)]


class InMemoryBatches(LightningDataModule):
    """`distinct` pre-made (uint8 [N,3,S,S], int64 [N]) batches, cycled for `steps` steps.

    Pinned when `pin` (so host-to-device copies are asynchronous on both sides, as a real loader
    with pin_memory would give). `batch_size`, `num_classes`, `image_size` as every DataModule.
    """

    def __init__(self, batch_size: int, image_size: int, num_classes: int, steps: int,
                 distinct: int = 4, pin: bool = False, seed: int = 0):
        super().__init__()
        self.batch_size, self.image_size, self.num_classes = batch_size, image_size, num_classes
        self.steps = steps
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(distinct):
            images = torch.randint(0, 256, (batch_size, 3, image_size, image_size),
                                   dtype=torch.uint8, generator=g)
            labels = torch.randint(0, num_classes, (batch_size,), generator=g)
            self.batches.append((images.pin_memory(), labels.pin_memory()) if pin
                                else (images, labels))

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: the pre-made batches pass through untouched (no collation).
        return DataLoader(_Cycle(self.batches, self.steps), batch_size=None)


class StepClock(Callback):
    """Ticks after every optimiser step. Warm-up steps are timed one by one (they hold the
    compilation); then `windows` windows of `window_steps` steps, each one figure in img/s.
    `sync` (e.g. torch.cuda.synchronize) runs only at those boundaries, on both sides."""

    def __init__(self, warmup_steps: int, window_steps: int, windows: int = 1, sync=None):
        self.warmup_steps, self.window_steps, self.windows = warmup_steps, window_steps, windows
        self.sync = sync or (lambda: None)
        self.reset()

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.window_steps * self.windows

    def reset(self) -> None:
        self.step, self.images, self.warmup_times, self.window_rates = 0, 0, [], []
        self._last = None

    def start(self) -> None:
        self.reset()
        self.sync()
        self._last = time.perf_counter()

    def tick(self, images: int) -> None:
        self.step += 1
        if self.step <= self.warmup_steps:
            self.sync()
            now = time.perf_counter()
            self.warmup_times.append(now - self._last)
            self._last = now
            return
        self.images += images
        if (self.step - self.warmup_steps) % self.window_steps == 0:
            self.sync()
            now = time.perf_counter()
            self.window_rates.append(self.images / (now - self._last))
            self.images, self._last = 0, now

    def images_per_s(self) -> float:
        """The timed steps' rate (windows are equal in steps, so the harmonic mean)."""
        if not self.window_rates:
            raise RuntimeError("no timed window finished: the run was shorter than its warm-up")
        return len(self.window_rates) / sum(1 / r for r in self.window_rates)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.tick(batch[0].shape[0])


def make_module(cfg: dict, channels_last: bool = False, compile: bool = False):
    from resnext_lit.training.module import ResNeXtModule

    # "cosine" over one epoch: a per-step schedule valid for a one-epoch fit (the default
    # "step" milestones [30, 60] would not fit in max_epochs=1).
    return ResNeXtModule(arch=cfg["arch"], num_classes=cfg["num_classes"],
                         depth=cfg.get("depth"), cardinality=cfg.get("cardinality"),
                         bottleneck_width=cfg.get("bottleneck_width"), schedule="cosine",
                         channels_last=channels_last, compile=compile)


def lightning_run(module, data: LightningDataModule, clock: StepClock, accelerator: str = "cpu",
                  precision: str = "32-true", max_epochs: int = 1, **trainer_kwargs) -> float:
    """One `Trainer.fit` of `clock.steps` steps; returns the timed steps' images/s."""
    if isinstance(data, InMemoryBatches):
        data.steps = clock.steps
    trainer = Trainer(accelerator=accelerator, devices=1, precision=precision,
                      max_epochs=max_epochs, max_steps=clock.steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      callbacks=[clock], **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return clock.images_per_s()


def raw_run(module, data: InMemoryBatches, clock: StepClock, device: str = "cpu",
            precision: str = "32-true") -> float:
    """The same training as `lightning_run`, written by hand; returns images/s."""
    hp = module.hparams
    device = torch.device(device)
    model = module.model.to(device).train()
    if hp.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = module.mean.to(device), module.std.to(device)
    lr = peak_lr(hp.lr, data.batch_size)  # the module's rule: lr per 256 images, one device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=hp.momentum,
                                nesterov=hp.nesterov, weight_decay=hp.weight_decay)
    steps = clock.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        hp.schedule, step / steps, 1, hp.milestones, hp.gamma, hp.warmup_epochs, hp.peak_epoch))
    accuracy = MulticlassAccuracy(hp.num_classes, top_k=1, average="micro").to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if precision == "bf16-mixed" else nullcontext())
    data.steps = steps
    clock.start()
    for images, labels in data.train_dataloader():
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True).long()
        images = (images.float() - mean) / std
        if hp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)
        accuracy.update(logits.detach(), labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        clock.tick(images.shape[0])
    return clock.images_per_s()


def run(tiny: bool = False, repeats: int | None = None) -> Report:
    import logging

    from resnext_lit.models import complexity

    cfg = dict(TINY if tiny else NORMAL)
    cfg["repeats"] = repeats or cfg["repeats"]
    # Lightning prints its device summary at every fit: 2 x repeats times here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.manual_seed(0)
    module = make_module(cfg)
    data = InMemoryBatches(cfg["batch_size"], cfg["image_size"], cfg["num_classes"], steps=1)
    clock = StepClock(cfg["warmup_steps"], cfg["timed_steps"])
    macs = complexity(module.model, cfg["image_size"])["macs"]
    report = Report("loop", tiny, {**cfg, "device": "cpu", "precision": "32-true",
                                   "macs_per_image": macs, "raw_loop_step": RAW_STEP})
    with torch_threads(cfg["threads"]):
        values = interleave({"raw_loop": lambda: raw_run(module, data, clock),
                             "lightning": lambda: lightning_run(module, data, clock)},
                            cfg["repeats"], cfg["warmup"])
    for name, vals in values.items():
        report.measure(name, vals, "img/s", cfg["warmup"])
    report.ratio("lightning / raw_loop", "lightning", "raw_loop", (">=", 0.97))
    step_ms = 1e3 * cfg["batch_size"] / report.measurements["raw_loop"]["median"]
    report.note(f"a raw step takes {step_ms:.0f} ms here; Lightning's per-step cost is fixed, "
                "so its share shrinks as steps grow (GPU steps of ResNeXt-50 at batch 256 "
                "take ~50 ms: `bench gpu`)")
    return report
