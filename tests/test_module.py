"""The LightningModule's options, in process: normalisation, TTA, EMA, channels_last."""

import torch
from lightning import Trainer

from resnext_lit.data import IMAGENET_MEAN, IMAGENET_STD
from resnext_lit.data.synthetic import SyntheticDataModule
from resnext_lit.training.module import ResNeXtModule


def tiny(**kwargs):
    torch.manual_seed(0)
    return ResNeXtModule("resnext29_8x64d", 10, depth=11, cardinality=2, bottleneck_width=1,
                         **kwargs)


def test_uint8_batches_are_normalised_on_the_device():
    module = tiny(channels_last=True)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out, labels = module.on_after_batch_transfer((images, torch.tensor([1, 2])), 0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.float() - mean) / std)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64


def test_flip_tta_averages_the_mirrored_logits():
    module = tiny(flip_tta=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = (module.model(x) + module.model(x.flip(3))) / 2
        torch.testing.assert_close(module._eval_logits(x), expected)


def test_ema_weights_follow_training_and_are_evaluated():
    module = tiny(ema_decay=0.5)
    Trainer(accelerator="cpu", fast_dev_run=3, logger=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, SyntheticDataModule(batch_size=8,
                                                                         image_size=8))
    assert int(module.ema.n_averaged) == 3
    ema_w, w = module.ema.module.fc.weight, module.model.fc.weight
    assert not torch.equal(ema_w, w)  # an average of the steps, not the last weights
    assert not ema_w.requires_grad
    x = torch.randn(2, 3, 8, 8)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module._eval_logits(x), module.ema.module(x))
    # the optimiser never sees the EMA copy
    trained = {id(p) for p in module.model.parameters()}
    assert not any(id(p) in trained for p in module.ema.parameters())
