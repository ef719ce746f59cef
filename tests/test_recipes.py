"""The recipes resolve to their sources' values on any number of GPUs.

    .venv/bin/python -m pytest -q tests/test_recipes.py

`configs/imagenet_fast.yaml` against ffcv-imagenet's ResNet-50 table (libffcv/ffcv-imagenet
`rn50_configs/rn50_*_epochs.yaml` and `train_imagenet.py`, restated in ../shared/PAPER.md), and
the paper recipes' global batch and lr at 1, 8 and 64 GPUs. Their formulas are written here again
independently (NumPy interpolation, as their code does), not imported from the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from resnext_lit.cli import main
from resnext_lit.data.ffcv import ProgressiveResizing
from resnext_lit.training.scale import per_device_batch, scale_of
from resnext_lit.training.schedules import lr_factor

ROOT = Path(__file__).resolve().parents[1]
# ffcv-imagenet rn50: epochs -> (start_ramp, end_ramp); every length shares the other keys.
FFCV_RN50_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48),
                   88: (65, 76)}
FFCV_RN50 = dict(gpus=8, batch_size=512, lr=1.7, momentum=0.9, weight_decay=1e-4, bn_wd=0,
                 label_smoothing=0.1, lr_peak_epoch=2, min_res=160, max_res=192, val_res=256,
                 crop_ratio=224 / 256, lr_tta=True, use_blurpool=True, arch="resnet50")


def resolved(recipe: str, *args: str) -> dict:
    """The config `fit` would run, as `--print_config` prints it."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / recipe), *args, "--print_config"])
    return yaml.safe_load(out.getvalue())


def their_resolution(epoch, min_res, max_res, start_ramp, end_ramp):
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    return int(np.round(np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0]
                        / 32)) * 32


def their_lr(epoch, lr, epochs, lr_peak_epoch):
    return np.interp([epoch], [0, lr_peak_epoch, epochs], [1e-4 * lr, lr, 0])[0]


def test_fast_recipe_is_ffcv_imagenets_resnet50_recipe():
    config = resolved("imagenet_fast.yaml")
    model, data, trainer = config["model"], config["data"]["init_args"], config["trainer"]
    ffcv = FFCV_RN50
    # Batch and lr: theirs is 512 per GPU on 8 GPUs, lr 1.7 for that global batch.
    assert config["global_batch_size"] == ffcv["gpus"] * ffcv["batch_size"]
    assert config["paper_batch_per_device"] == ffcv["batch_size"]
    assert per_device_batch(config["global_batch_size"], ffcv["gpus"], 1) == ffcv["batch_size"]
    assert scale_of(ffcv["gpus"], ffcv["batch_size"], 1, model["lr"])["lr"] == \
        pytest.approx(ffcv["lr"])
    assert (model["arch"], model["momentum"], model["nesterov"]) == (ffcv["arch"],
                                                                       ffcv["momentum"], False)
    assert model["weight_decay"] == ffcv["weight_decay"] and model["no_bn_weight_decay"]
    assert model["label_smoothing"] == ffcv["label_smoothing"]
    assert model["blurpool"] is ffcv["use_blurpool"] and model["flip_tta"] is ffcv["lr_tta"]
    assert model["channels_last"] and "mixed" in trainer["precision"]
    assert (model["schedule"], model["peak_epoch"]) == ("triangular", ffcv["lr_peak_epoch"])
    assert (data["res"], data["val_res"]) == (ffcv["min_res"], ffcv["val_res"])
    assert data["val_crop_ratio"] == pytest.approx(ffcv["crop_ratio"])
    [resize] = [c for c in trainer["callbacks"] if c["class_path"].endswith("ProgressiveResizing")]
    callback = ProgressiveResizing(**resize["init_args"])
    assert (callback.min_res, callback.max_res) == (ffcv["min_res"], ffcv["max_res"])
    # Every run length: their ramp, their resolution per epoch, their lr per (fractional) epoch.
    for epochs, ramp in FFCV_RN50_RAMPS.items():
        assert callback.ramp_for(epochs) == ramp, epochs
        ours = callback.schedule(epochs)
        assert [ours(e) for e in range(epochs)] == [
            their_resolution(e, ffcv["min_res"], ffcv["max_res"], *ramp) for e in range(epochs)]
        for epoch in np.linspace(0, epochs, 4 * epochs + 1):
            assert ffcv["lr"] * lr_factor("triangular", epoch, epochs, peak_epoch=2) == \
                pytest.approx(their_lr(epoch, ffcv["lr"], epochs, 2), abs=1e-12), (epochs, epoch)
    with pytest.raises(ValueError, match="no ramp for trainer.max_epochs=50"):
        callback.ramp_for(50)


@pytest.mark.parametrize("recipe, global_batch, lr", [("imagenet_paper.yaml", 256, 0.1),
                                                      ("cifar_paper.yaml", 128, 0.1)])
def test_paper_recipes_keep_the_papers_batch_and_lr_on_1_8_and_64_gpus(recipe, global_batch,
                                                                        lr):
    config = resolved(recipe)
    assert config["global_batch_size"] == global_batch  # the paper's (Sec. 4, Sec. 5.3)
    for gpus, accumulate in ((1, 1), (1, 2), (8, 1), (64, 1)):
        per_device = per_device_batch(global_batch, gpus, accumulate)
        scale = scale_of(gpus, per_device, accumulate, config["model"]["lr"])
        assert (scale["global_batch"], scale["lr"]) == (global_batch, pytest.approx(lr))
    assert config["model"]["channels_last"] and config["trainer"]["precision"] == "bf16-mixed"
    assert not config["model"]["blurpool"]  # the paper's networks have none


def test_bf16_recipes_use_float16_on_a_gpu_without_bf16(monkeypatch, capsys):
    """A V100 has no bf16: the paper recipes' `bf16-mixed` becomes `16-mixed`, said in one line
    (simulated: CI has no GPU). Where bf16 exists, or on CPU, the recipe's precision stays."""
    import torch
    from jsonargparse import Namespace

    from resnext_lit.training.lightning_cli import _bf16_where_supported

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    for supported, expected in ((False, "16-mixed"), (True, "bf16-mixed")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda supported=supported, **kw: supported)
        trainer = Namespace(precision="bf16-mixed")
        _bf16_where_supported(trainer)
        assert trainer.precision == expected
    assert capsys.readouterr().err.splitlines() == [
        "precision: Tesla V100-SXM2-32GB has no bf16: using 16-mixed (float16 autocast + "
        "gradient scaling)"]
