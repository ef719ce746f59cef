"""`--model.weights`: torchvision's, our and Lightning's files load strictly, in every form.

    .venv/bin/python -m pytest -q tests/test_weights.py

Nothing is downloaded: torchvision's randomly initialised networks, saved here, stand in for
its published weights (the same names and shapes; the values do not matter to a load).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import torch
import torchvision
from lightning import Trainer

from resnext_lit.cli import main
from resnext_lit.data.synthetic import SyntheticDataModule
from resnext_lit.training.module import ResNeXtModule

from helpers import ROOT

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # small: CPU speed


def _randomise_bn(net: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so a BN state that failed to load would change the logits."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """torchvision's resnext50_32x4d state dict, saved as torchvision publishes its weights."""
    torch.manual_seed(0)
    net = torchvision.models.resnext50_32x4d()
    with torch.no_grad():
        _randomise_bn(net)
    path = tmp_path_factory.mktemp("weights") / "resnext50_32x4d.pth"
    torch.save(net.state_dict(), path)
    with torch.no_grad():
        return path, net.eval()(X)


def _logits(module: ResNeXtModule) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(X)  # the network itself: batches are normalised before forward


@pytest.mark.parametrize("form", ["c", "a"])
def test_torchvisions_state_dict_gives_torchvisions_logits(torchvision_file, form):
    path, expected = torchvision_file
    module = ResNeXtModule("resnext50_32x4d", weights=str(path), form=form)
    torch.testing.assert_close(_logits(module), expected, rtol=1e-4, atol=1e-4)


TINY = dict(arch="resnext29_8x64d", num_classes=10, depth=11, cardinality=2, bottleneck_width=1)


def test_a_lightning_checkpoints_state_dict_loads(torchvision_file, tmp_path):
    path, expected = torchvision_file
    state = {f"model.{k}": v for k, v in torch.load(path, weights_only=True).items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.ckpt")
    loaded = ResNeXtModule("resnext50_32x4d", weights=str(tmp_path / "run.ckpt"))
    torch.testing.assert_close(_logits(loaded), expected, rtol=1e-4, atol=1e-4)


def test_our_weights_load_across_forms_and_a_checkpoints_ema_is_preferred(tmp_path):
    """Ours in form (a) -> form (c) computes the same; a checkpoint with an EMA copy gives it,
    the weights its run validated and reported."""
    torch.manual_seed(0)
    ours = ResNeXtModule(**TINY, form="a")
    with torch.no_grad():
        _randomise_bn(ours.model)
    torch.save(ours.model.state_dict(), tmp_path / "ours_a.pt")
    x = torch.randn(2, 3, 8, 8)
    loaded = ResNeXtModule(**TINY, weights=str(tmp_path / "ours_a.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours.eval()(x), rtol=1e-4, atol=1e-5)
    state = {f"model.{k}": v for k, v in ours.model.state_dict().items()}
    zeros = {k.replace("model.", "ema.module.", 1): torch.zeros_like(v) for k, v in state.items()}
    torch.save({"state_dict": {**state, **zeros, "ema.n_averaged": torch.tensor(5)}},
               tmp_path / "ema.ckpt")
    loaded = ResNeXtModule(**TINY, weights=str(tmp_path / "ema.ckpt"), ema_decay=0.9)
    assert not loaded.model.fc.weight.any()
    assert not loaded.ema.module.fc.weight.any()  # the EMA copy starts from the loaded weights


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(num_classes=10), "fc.weight is [1000, 2048] but resnext50_32x4d with num_classes=10 "
                           "has [10, 2048]"),
    (dict(arch="resnet50"), "layer1.0.conv1.weight is [128, 64, 1, 1] but resnet50 with "
                            "num_classes=1000 has [64, 64, 1, 1]"),
    (dict(arch="resnext101_32x4d"), "do not fit resnext101_32x4d with num_classes=1000: "
                                    "missing layer3.6.conv1.weight"),
], ids=["num_classes", "another_arch", "deeper"])
def test_a_mismatch_is_one_line_naming_the_arch_and_the_key(torchvision_file, kwargs, culprit):
    path, _ = torchvision_file
    with pytest.raises(ValueError) as err:
        ResNeXtModule(**{"arch": "resnext50_32x4d", **kwargs}, weights=str(path))
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_unexpected_keys_and_bad_files_are_one_line(tmp_path):
    extra = {**ResNeXtModule(**TINY).model.state_dict(), "head.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    torch.save({"epoch": 1}, tmp_path / "no_weights.pt")
    torch.save({"model": extra, "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pt")
    for name, culprit in [("extra.pt", "unexpected head.weight (0 missing, 1 unexpected keys)"),
                          ("missing.pt", "missing.pt: no such file"),
                          ("broken.pt", "is not a readable PyTorch file"),
                          ("no_weights.pt", "neither a state dict nor a Lightning checkpoint"),
                          ("pickled.pt", "GLOBAL argparse.Namespace); save its state_dict()")]:
        with pytest.raises(ValueError) as err:
            ResNeXtModule(**TINY, weights=str(tmp_path / name))
        assert culprit in str(err.value) and "\n" not in str(err.value), name


def test_the_cli_says_a_missing_weights_file_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "--config", DEMO, "--model.depth=11",
                 "--model.cardinality=2", "--model.bottleneck_width=2",
                 "--model.weights=gone.pth", "--trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "error: weights gone.pth: no such file", err


def test_a_checkpoint_of_a_run_started_from_weights_outlives_the_file(tmp_path, monkeypatch):
    """Checkpoints hold the weights, so neither `load_from_checkpoint` nor `--ckpt_path` reads the
    start-up file again (`ResNeXtModule.on_save_checkpoint`), which may be deleted by then."""
    start = tmp_path / "start.pt"
    torch.save(ResNeXtModule(**TINY).model.state_dict(), start)
    module = ResNeXtModule(**TINY, weights=str(start))
    trainer = Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, SyntheticDataModule(batch_size=8, image_size=8, num_train=16))
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    assert module.hparams.weights == str(start)  # the run itself still names its start
    start.unlink()
    restored = ResNeXtModule.load_from_checkpoint(ckpt)
    assert restored.hparams.weights is None
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[k], v)
    # --ckpt_path through the CLI: the model is built from the checkpoint's hparams.
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "--config", DEMO, "--model.depth=11",
                 "--model.cardinality=2", "--model.bottleneck_width=1",
                 "--data=resnext_lit.data.synthetic.SyntheticDataModule",
                 "--data.image_size=8", "--data.num_train=16", "--trainer.logger=false",
                 "--trainer.enable_progress_bar=false", f"--ckpt_path={ckpt}"])
    assert code == 0


def test_a_lightning_modules_own_state_dict_loads(tmp_path):
    """`torch.save(module.state_dict())` holds the network under `model.` (and its EMA copy
    under `ema.`): it loads as a checkpoint's would, EMA first."""
    torch.manual_seed(0)
    ours = ResNeXtModule(**TINY, ema_decay=0.9)
    with torch.no_grad():
        _randomise_bn(ours.model)
        ours.ema.module.load_state_dict(ours.model.state_dict())
    torch.save(ours.state_dict(), tmp_path / "module.pt")
    loaded = ResNeXtModule(**TINY, weights=str(tmp_path / "module.pt")).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours.eval().model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_readmes_first_check_runs_as_written_on_a_val_beton(tmp_path, beton_make_flat_val,
                                                                monkeypatch, capsys):
    """The README's first check, its command as written: ImageNet's flat val layout (Kaggle's
    LOC files, 1000 classes) -> a val beton -> torchvision's resnext50_32x4d state dict, whose
    fc answers class 7 whatever the image, validated at 224 px. Its top-1 error is then exactly
    the share of images not of class 7: the weights loaded, the labels mapped, the crop ran."""
    synsets = [f"n{i:08d}" for i in range(1000)]
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{w} class {i}\n" for i, w in enumerate(synsets)))
    labels = [7, 7, 3, 7, 999, 0, 7, 500]  # 4 of 8 are class 7
    val = beton_make_flat_val(tmp_path / "val", labels, size=64)
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},{synsets[k]} 1 2 30 40\n" for i, k in enumerate(labels, 1)))
    out = tmp_path / "imagenet"
    assert main(["write-beton", "--val", str(val), "--val-labels", str(solution), "--classes",
                 str(mapping), "--out", str(out), "--workers", "2", "--no-progress"]) == 0

    net = torchvision.models.resnext50_32x4d()
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        net.fc.bias[7] = 10.0
    weights = tmp_path / "resnext50_32x4d-7cdf4587.pth"
    torch.save(net.state_dict(), weights)

    readme = (ROOT / "README.md").read_text()
    start = readme.index("python -m resnext_lit validate --config configs/imagenet_paper.yaml")
    command = readme[start:readme.index("```", start)].replace("\\\n", " ")
    argv = [arg.replace("data/imagenet/val.beton", str(out / "val.beton"))
            .replace("resnext50_32x4d-7cdf4587.pth", str(weights))
            for arg in shlex.split(command)[3:]]  # after "python -m resnext_lit"
    assert str(weights) in argv and str(out / "val.beton") in argv
    monkeypatch.chdir(ROOT)  # the README's relative config paths; the run goes under tmp_path
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1",
           "--trainer.enable_progress_bar=false", "--data.init_args.num_workers=2",
           "--data.init_args.val_batch_size=4", f"--run_root={tmp_path / 'runs'}"]
    assert main([*argv, *cpu]) == 0, capsys.readouterr().err[-2000:]
    (record,) = (tmp_path / "runs" / "eval_torchvision").rglob("results.json")
    result = json.loads(record.read_text())
    assert result["evaluated"] == str(weights) and result["dataset"] == "imagenet"
    assert result["model"]["image_size"] == 224 and result["model"]["params"] == 25_028_904
    assert result["final"]["val/top1_err"] == pytest.approx(50.0)
