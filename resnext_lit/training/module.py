"""The LightningModule: a zoo ResNeXt, its loss, its metrics and the paper's optimisation.

    python -m resnext_lit fit --config configs/imagenet_paper.yaml --model.arch resnext50_32x4d
    python -m resnext_lit validate --config configs/imagenet_paper.yaml \
        --config configs/eval/torchvision.yaml --model.weights resnext50_32x4d-7cdf4587.pth

Errors are logged in percent, as the paper reports them: `val/top1_err` = 100 * (1 - top-1
accuracy). Batches arrive as uint8 NCHW (see `resnext_lit.data`) and are normalised here, on the
device, so loaders move raw bytes.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, PositiveFloat
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..models import create_model, load_weights
from .checkpoints import forget_start_weights
from .nonfinite import NonFiniteGuard
from .predictions import EVAL_DATA, eval_data
from .scale import run_scale
from .schedules import check_schedule, lr_factor


class ResNeXtModule(LightningModule):
    """Train and evaluate one registered network.

    Args:
        arch: a `resnext_lit.models` name, e.g. "resnext50_32x4d" (`python -m resnext_lit models`).
        num_classes: linked from the DataModule by the CLI; never typed twice.
        depth, form, cardinality, bottleneck_width, zero_init_residual: overrides of the arch's
            registry entry (`resnext_lit.models.create_model`).
        blurpool: blur before every strided conv with >= 16 input channels (ffcv-imagenet's
            fast recipe, Zhang 2019; `resnext_lit.models.resnext.BlurConv2d`); off in the
            paper's recipes.
        weights: a file of pretrained weights loaded strictly into the network when the module
            is built: torchvision's state dict, ours, or a Lightning checkpoint's (its EMA
            weights if it has them); forms (a) and (b) get them converted
            (`resnext_lit.models.weights`). A run resumed or evaluated with `--ckpt_path` gets
            the checkpoint's weights: Lightning restores them after this. Checkpoints save
            `weights` as None: they hold their weights, and the file may be gone by then.
        lr: learning rate per 256 images; the optimiser uses lr * global_batch / 256, so the
            paper's lr is the paper's lr on any number of GPUs (`resnext_lit.training.scale`).
        momentum, nesterov, weight_decay: SGD (paper: 0.9, 1e-4; official code: Nesterov).
        no_bn_weight_decay: exempt BN and bias parameters (1-d tensors) from weight decay.
        schedule, milestones, gamma, warmup_epochs, peak_epoch: see
            `resnext_lit.training.schedules`.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        mixup_alpha, cutmix_alpha: MixUp (Zhang et al. 2018, arXiv:1710.09412) and CutMix (Yun
            et al. 2019, arXiv:1905.04899) of each training batch on the device, by
            `torchvision.transforms.v2`: each image is mixed with its neighbour in the (shuffled)
            batch, by a share lambda ~ Beta(alpha, alpha) drawn on the host once per batch.
            0 is off (the default and the paper's). Both > 0: one of the two per batch at even
            odds, as in timm and torchvision's references. Usual values: mixup 0.2
            (torchvision's reference recipe, timm's ResNet "A1") or 0.8 (timm, DeiT), cutmix 1.0.
            The loss is the cross-entropy with the mixed soft targets (label smoothing then
            applies on top; both are linear, so the order does not matter: timm's
            `mixup_target` smooths first); train top-1 is scored against each image's dominant
            label, the one with the larger share.
        channels_last, compile: memory format and `torch.compile` for speed on GPUs.
        ema_decay: keep an exponential moving average of the weights, evaluated on val.
        flip_tta: average the logits of the image and its mirror at validation.
        nonfinite_loss: on a NaN/inf training loss, "stop" (one line naming the step, epoch and
            lr) or "skip" the step (`resnext_lit.training.nonfinite`).
        mean, std: channel statistics on the 0-255 scale, subtracted and divided on the device;
            linked from the DataModule by the CLI (ImageNet's, or CIFAR's for CIFAR).
    """

    def __init__(self, arch: str = "resnext50_32x4d", num_classes: int = 1000,
                 depth: int | None = None, form: Literal["a", "b", "c"] | None = None,
                 cardinality: int | None = None,
                 bottleneck_width: int | None = None, zero_init_residual: bool = False,
                 blurpool: bool = False, weights: str | None = None,
                 lr: PositiveFloat = 0.1, momentum: NonNegativeFloat = 0.9,
                 nesterov: bool = False, weight_decay: NonNegativeFloat = 1e-4,
                 no_bn_weight_decay: bool = False,
                 schedule: Literal["step", "cosine", "triangular"] = "step",
                 milestones: tuple[int, ...] = (30, 60), gamma: PositiveFloat = 0.1,
                 warmup_epochs: NonNegativeFloat = 0.0, peak_epoch: PositiveFloat = 2.0,
                 label_smoothing: NonNegativeFloat = 0.0, mixup_alpha: NonNegativeFloat = 0.0,
                 cutmix_alpha: NonNegativeFloat = 0.0, channels_last: bool = False,
                 compile: bool = False, ema_decay: float | None = None, flip_tta: bool = False,
                 nonfinite_loss: Literal["stop", "skip"] = "stop",
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        self.save_hyperparameters()
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise UserError(f"model.ema_decay must be in (0, 1), got {ema_decay}")
        for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise UserError(f"model.{key} must be >= 0 (0 is off), got {alpha}")
        if not 0 <= label_smoothing <= 1:  # a share of the target mass
            raise UserError(f"model.label_smoothing must be in [0, 1], got {label_smoothing}")
        if nesterov and momentum <= 0:  # torch.optim.SGD refuses it at the first step
            raise UserError(f"model.nesterov needs model.momentum > 0, got {momentum}")
        self.model = create_model(arch, num_classes=num_classes, depth=depth, form=form,
                                  cardinality=cardinality, bottleneck_width=bottleneck_width,
                                  zero_init_residual=zero_init_residual, blurpool=blurpool)
        if weights is not None:  # before the EMA copy, which starts from the loaded weights
            overrides = dict(depth=depth, form=form, cardinality=cardinality,
                             bottleneck_width=bottleneck_width)
            name = f"{arch} with num_classes={num_classes}" + "".join(
                f", {k}={v}" for k, v in overrides.items() if v is not None)
            rank_zero_info(load_weights(self.model, weights, name))
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)
        top5 = min(5, num_classes)
        # validate_args=False: the check reads the labels back to the host (a sync per step);
        # the DataModule's class count is checked against the model once, in setup.
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro",
                                             validate_args=False)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), False)
        mixes = [mix(alpha=alpha, num_classes=num_classes)
                 for mix, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha]
        self.mix = v2.RandomChoice(mixes) if mixes else None
        self._clock = _Throughput()
        self._nonfinite = NonFiniteGuard(nonfinite_loss)

    # -- data on the device ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = (images.float() - self.mean) / self.std
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.long()

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)  # the model and its EMA copy
        if self.hparams.compile:
            self.model.compile()  # in place: state_dict keys stay those of the zoo

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # -- training ------------------------------------------------------------------------------
    # No device->host sync and no collective per step (see README, "The hot path"): the loss
    # is reduced over ranks once per epoch, the lr is logged as a host tensor (a Python float
    # would be copied to the device), and the non-finite check reads its flag every N steps.
    def on_train_start(self) -> None:
        self._clock.start("train")  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self) -> None:
        self._clock.start("train")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.mix is not None:
            images, targets, labels = self.mixed(images, labels)
        statistics = self._nonfinite.keep(self.model)  # "skip": BN's running stats, to restore
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        if not self._nonfinite.check(self, loss, batch_idx, statistics):
            return None  # skipped: no backward, no update, BN statistics as before
        self.train_top1.update(logits.detach(), labels)
        self._clock.count("train", images.shape[0])
        # Off the progress bar: Lightning would read a bar metric back after every step; the
        # CLI's bar shows it at logging steps (`LogStepProgressBar`).
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("lr", torch.tensor(self.optimizers().param_groups[0]["lr"]), on_step=True,
                 on_epoch=False)
        return loss

    def mixed(self, images: torch.Tensor, labels: torch.Tensor):
        """MixUp or CutMix of a batch: the images, their soft targets, each one's dominant label.

        torchvision's v2 classes read only host tensors (their Beta draw, CutMix's box, the
        choice of the two) and mix with Python floats and slices; their one-hot of the labels
        skips its range check on CUDA (it would read them back): no device->host copy.
        """
        images, targets = self.mix(images, labels)
        return images, targets, targets.argmax(1)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Once per update (not per batch, which double-counts under gradient accumulation), and
        # before the callbacks' on_train_batch_end, so a checkpoint saved there includes it.
        if self.ema is not None and self._nonfinite.last_ok:
            self.ema.update_parameters(self.model)

    def on_train_epoch_end(self) -> None:
        self._nonfinite.verify(self.trainer)  # an epoch cut short (max_steps) is checked too
        self.log("train/top1_err", 100 * (1 - self.train_top1.compute()))
        self.train_top1.reset()
        self.log("train/images_per_s", self._clock.rate("train", self.trainer.world_size))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.trainer.state.fn == "fit":  # every rank saves (and so checks) at the same step
            self._nonfinite.verify(self.trainer)
        forget_start_weights(checkpoint)  # a copy of the hparams: self.hparams keeps the name
        if self.trainer.datamodule is not None:  # class names and val crop, for `predict`
            checkpoint[EVAL_DATA] = eval_data(self.trainer.datamodule)

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        model = self.ema.module if self.ema is not None else self.model
        logits = model(images)
        if self.hparams.flip_tta:
            logits = (logits + model(images.flip(3))) / 2
        return logits

    def on_validation_epoch_start(self) -> None:
        self._clock.pause("train")  # validation inside a training epoch is not training time
        self._clock.start("val")

    def validation_step(self, batch, batch_idx: int, prefix: str = "val") -> None:
        images, labels = batch
        self._clock.count("val", images.shape[0])
        logits = self._eval_logits(images)
        self.val_top1.update(logits, labels)
        self.val_top5.update(logits, labels)
        # sum/count reduced over every rank, so the loss is exact under DDP
        self.log(f"{prefix}/loss", F.cross_entropy(logits, labels), on_epoch=True,
                 sync_dist=True, batch_size=labels.shape[0])

    def on_validation_epoch_end(self, prefix: str = "val") -> None:
        # torchmetrics sums correct/total over all ranks in compute(): the error is exact.
        self.log(f"{prefix}/top1_err", 100 * (1 - self.val_top1.compute()), prog_bar=True)
        self.log(f"{prefix}/top5_err", 100 * (1 - self.val_top5.compute()))
        self.val_top1.reset()
        self.val_top5.reset()
        if not self.trainer.sanity_checking:
            self.log(f"{prefix}/images_per_s", self._clock.rate("val",
                                                                self.trainer.world_size))
        self._clock.resume("train")

    # `test` is the same evaluation on the DataModule's test split, logged as test/*.
    on_test_epoch_start = on_validation_epoch_start

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, prefix="test")

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end(prefix="test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_logits(batch[0]).softmax(dim=1)

    # -- optimisation --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        classes = getattr(datamodule, "num_classes", None)
        if classes is not None and classes != self.hparams.num_classes:
            raise UserError(f"model.num_classes={self.hparams.num_classes} but the data has "
                            f"{classes} classes")

    def scale(self) -> dict:
        """World size, per-device and global batch, and the lr after scaling
        (`resnext_lit.training.scale`)."""
        if getattr(self.trainer.datamodule, "batch_size", None) is None:
            raise UserError("the DataModule must expose `batch_size` (images per device)")
        return run_scale(self.trainer, self.trainer.datamodule, self.hparams.lr)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if hp.no_bn_weight_decay and p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        lr = self.scale()["lr"]  # the recipe's lr per 256 images x global batch / 256
        optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=lr,
                                    momentum=hp.momentum, nesterov=hp.nesterov)
        epochs, steps_per_epoch = self.schedule_length()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            hp.schedule, step / steps_per_epoch, epochs, hp.milestones, hp.gamma,
            hp.warmup_epochs, hp.peak_epoch))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def schedule_length(self) -> tuple[float, int]:
        """(epochs the lr schedule spans, optimiser steps per epoch). Sized from the real
        per-rank loader after setup (loaded here, as `estimated_stepping_batches` does), so
        milestones land on exact steps; a resume does not change it. The length is `max_epochs`
        when set, else (-1 or unset, with `max_steps`) max_steps / steps per epoch: a
        step-limited run gets its whole schedule in its steps."""
        trainer, hp = self.trainer, self.hparams
        if trainer.train_dataloader is None:  # the loader, also when max_epochs is -1
            trainer.fit_loop.setup_data()
        steps_per_epoch = math.ceil(trainer.num_training_batches
                                    / trainer.accumulate_grad_batches)
        if steps_per_epoch < 1:
            data = trainer.datamodule
            raise UserError(f"data.batch_size={getattr(data, 'batch_size', '?')} per device x "
                            f"{trainer.world_size} device(s) leaves no full training batch: "
                            "lower the batch size (or --global_batch_size)")
        if trainer.max_epochs not in (None, -1):
            return trainer.max_epochs, steps_per_epoch
        if trainer.max_steps in (None, -1):  # parse time refuses this; a direct Trainer may not
            raise UserError("trainer.max_epochs -1 and no trainer.max_steps: the lr schedule "
                            "needs an end")
        epochs = trainer.max_steps / steps_per_epoch
        check_schedule(hp.schedule, epochs, hp.milestones, hp.warmup_epochs, hp.peak_epoch,
                       limit=f"trainer.max_steps={trainer.max_steps} ({epochs:g} epochs)")
        return epochs, steps_per_epoch


class _Throughput:
    """Images per second of each phase ("train", "val"), counting only the time it ran: the
    validation inside a training epoch is paused out of the training rate. Host clock: over an
    epoch the device runs at most a few steps behind it, so no sync is needed."""

    def __init__(self):
        self.seconds, self.images, self.since = {}, {}, {}

    def start(self, phase: str) -> None:
        self.seconds[phase], self.images[phase] = 0.0, 0
        self.since[phase] = time.perf_counter()

    def pause(self, phase: str) -> None:
        if self.since.get(phase) is not None:
            self.seconds[phase] += time.perf_counter() - self.since[phase]
            self.since[phase] = None

    def resume(self, phase: str) -> None:
        if phase in self.seconds and self.since.get(phase) is None:
            self.since[phase] = time.perf_counter()

    def count(self, phase: str, images: int) -> None:
        self.images[phase] += images

    def rate(self, phase: str, world_size: int) -> float:
        """All ranks' images per second (ranks run in step, so this rank's count x ranks)."""
        self.pause(phase)
        rate = self.images[phase] * world_size / max(self.seconds[phase], 1e-9)
        self.resume(phase)
        return rate
