"""MixUp and CutMix per batch on the device: soft targets, mixed images, no read of the batch.

    .venv/bin/python -m pytest -q tests/test_mixup.py

`ResNeXtModule.mixed` is torchvision's v2 MixUp / CutMix on one-hot targets; these tests pin what
training relies on: which pixels move, the targets' shares, the loss and the hot path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, Trainer
from torch.overrides import TorchFunctionMode

from resnext_lit.data.synthetic import SyntheticDataModule
from resnext_lit.training.module import ResNeXtModule

from helpers import DEVICE_READS

TINY = dict(arch="resnext29_8x64d", num_classes=10, depth=11, cardinality=2, bottleneck_width=1)
FLAT = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 16, 16)  # image i is all i
LABELS = torch.arange(6)  # all different, so each target's shares are readable


def test_off_by_default_and_negative_alphas_are_refused():
    assert ResNeXtModule(**TINY).mix is None
    with pytest.raises(ValueError, match=r"^model.cutmix_alpha must be >= 0 \(0 is off\), got -1"):
        ResNeXtModule(**TINY, cutmix_alpha=-1.0)


def test_mixup_blends_each_image_with_its_neighbour_by_one_share_per_batch():
    module = ResNeXtModule(**TINY, mixup_alpha=0.2)
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    out, targets, dominant = module.mixed(x.clone(), LABELS)
    lam = targets[0, 0]
    assert 0 < lam < 1
    one_hot = F.one_hot(LABELS, 10).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.roll(1, 0))
    assert torch.equal(dominant, LABELS if lam > 0.5 else LABELS.roll(1))


def test_cutmix_pastes_one_box_of_the_neighbour_and_shares_the_label_by_area():
    module = ResNeXtModule(**TINY, cutmix_alpha=1.0)
    boxes = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out, targets, dominant = module.mixed(FLAT.clone(), LABELS)
        pasted = out != FLAT
        assert torch.equal(out[pasted], FLAT.roll(1, 0)[pasted])  # the neighbour's pixels
        box = pasted[0, 0]
        assert torch.equal(pasted, box.expand_as(pasted))  # one box for the batch
        if box.any():
            rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            boxes += 1
        kept = 1 - box.float().mean()
        torch.testing.assert_close(targets[LABELS, LABELS], kept.expand(6))
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        assert torch.equal(dominant, LABELS if kept > 0.5 else LABELS.roll(1))
    assert boxes >= 3


def test_both_on_pick_one_of_the_two_per_batch():
    module = ResNeXtModule(**TINY, mixup_alpha=0.8, cutmix_alpha=1.0)
    torch.manual_seed(0)
    kinds = []
    for _ in range(20):
        out = module.mixed(FLAT.clone(), LABELS)[0]
        pure = ((out == FLAT) | (out == FLAT.roll(1, 0))).all()  # CutMix moves whole pixels
        kinds.append("cutmix" if pure else "mixup")
    assert 5 <= kinds.count("cutmix") <= 15


class _DeviceReads(TorchFunctionMode):
    """Calls that read a non-CPU tensor back, or copy a host value onto a device."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_device = any(torch.is_tensor(a) and a.device.type != "cpu" for a in args)
        if func in DEVICE_READS and on_device:
            self.seen.append(func.__name__)
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") not in (None, "cpu"):
            self.seen.append("tensor(device=...)")
        return func(*args, **kwargs)


def test_the_mix_reads_nothing_back_from_the_device():
    """The batch on the meta device stands in for a GPU's: it has shapes but no values, so a
    read of it fails or is counted; v2's own draws (lambda, box, which of the two) are host
    tensors. (test_hot_path's counter, which counts host tensors too, sees those: 2 to 6 host
    reads per step.) A kernel's own C++ sync needs a GPU to see; v2's one-hot has none on CUDA:
    PyTorch's one_hot skips its range check there."""
    module = ResNeXtModule(**TINY, mixup_alpha=0.2, cutmix_alpha=1.0)
    images = torch.empty(8, 3, 16, 16, device="meta")
    labels = torch.empty(8, dtype=torch.long, device="meta")
    with _DeviceReads() as reads:
        for _ in range(8):  # both kinds, at even odds
            out, targets, dominant = module.mixed(images, labels)
    assert reads.seen == []
    assert out.shape == images.shape and targets.shape == (8, 10) and dominant.shape == (8,)


class _Steps(Callback):
    """Each training step's batch (after normalisation), its loss and what the top-1 scored."""

    def __init__(self, module):
        self.batches, self.losses, self.inputs, self.logits, self.scored = [], [], [], [], []
        self.targets = []
        module.model.register_forward_pre_hook(self._input)
        module.model.register_forward_hook(self._output)
        update = module.train_top1.update
        module.train_top1.update = lambda preds, labels: (self.scored.append(labels),
                                                          update(preds, labels))
        if module.mix is not None:
            mixed = module.mixed
            module.mixed = lambda images, labels: self._record(mixed(images, labels))

    def _record(self, result):
        self.targets.append(result[1])
        return result

    def _input(self, model, args):
        if model.training:
            self.inputs.append(args[0].detach().clone())

    def _output(self, model, args, out):
        if model.training:
            self.logits.append(out.detach())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())


@pytest.mark.parametrize("alphas", [{}, dict(mixup_alpha=0.8, cutmix_alpha=1.0)],
                         ids=["off", "mixup+cutmix"])
def test_training_steps_take_the_soft_target_loss(alphas):
    torch.manual_seed(0)
    module = ResNeXtModule(**TINY, label_smoothing=0.1, **alphas)
    steps = _Steps(module)
    Trainer(accelerator="cpu", fast_dev_run=4, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[steps]).fit(
        module, SyntheticDataModule(batch_size=8, image_size=8))
    assert len(steps.losses) == 4
    for i, ((images, labels), loss) in enumerate(zip(steps.batches, steps.losses)):
        logits = steps.logits[i]
        if not alphas:  # the batch as it came, the hard-label loss
            assert torch.equal(steps.inputs[i], images)
            torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
            assert torch.equal(steps.scored[i], labels)
            continue
        targets = steps.targets[i]
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        smoothed = 0.9 * targets + 0.1 / 10
        torch.testing.assert_close(loss, -(smoothed * logits.log_softmax(1)).sum(1).mean())
        assert torch.equal(steps.scored[i], targets.argmax(1))  # the dominant label
    if alphas:
        assert any(not torch.equal(x, b[0]) for x, b in zip(steps.inputs, steps.batches))
