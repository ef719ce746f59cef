"""Training through the real LightningCLI, in subprocesses, as a user would run it."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer

from resnext_lit.data.synthetic import SyntheticDataModule
from resnext_lit.facts import code_version
from resnext_lit.training.module import ResNeXtModule

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
TINY = ["--model.depth=11", "--model.cardinality=2", "--model.bottleneck_width=2",
        "--data.init_args.image_size=16", "--trainer.enable_progress_bar=false",
        "--model.warmup_epochs=0"]


def cli(*args, cwd, timeout=300):
    """`python -m resnext_lit ...` in `cwd`, so its runs/ folder lands in the test's tmp dir."""
    return subprocess.run([sys.executable, "-m", "resnext_lit", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def results(run_dir: Path) -> dict:
    (path,) = run_dir.rglob("results.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_fast_dev_run_on_synthetic_data(tmp_path):
    out = cli("fit", "--model.arch=resnext29_8x64d", "--model.depth=11",
              "--model.cardinality=2", "--model.bottleneck_width=2",
              "--data=resnext_lit.data.synthetic.SyntheticDataModule", "--data.num_classes=7",
              "--data.image_size=16", "--trainer.fast_dev_run=2",
              "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fast_dev_run" in out.stdout + out.stderr
    assert not list(tmp_path.rglob("results.json"))  # a smoke run is no result


class SeeCallbacks(Callback):
    """Writes the names of the Trainer's callbacks to callbacks.json (`--trainer.callbacks+=`)."""

    def on_fit_start(self, trainer, pl_module):
        names = [type(c).__name__ for c in trainer.callbacks]
        Path("callbacks.json").write_text(json.dumps(names))


def test_builtin_callbacks_are_config_keys_and_each_one_turns_off(tmp_path, monkeypatch, capsys):
    """`--print_config` shows every built-in; `builtins.<key>: null` (here from a config file)
    leaves that one out of the Trainer, and nothing it would have written is written (with
    both checkpoints off, `trainer.enable_checkpointing: false` keeps Lightning's own away)."""
    from resnext_lit.cli import main
    from resnext_lit.training.lightning_cli import BUILTINS

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as printed_and_left:
        main(["fit", "--config", DEMO, "--print_config"])
    assert printed_and_left.value.code in (0, None)
    printed = capsys.readouterr().out
    for key, (callback, _) in BUILTINS.items():
        assert re.search(rf"\n  {key}:\n    class_path: [\w.]+\.{callback.__qualname__}\n", printed)
    off = tmp_path / "off.yaml"
    off.write_text("builtins:\n" + "".join(f"  {key}: null\n" for key in BUILTINS)
                   + "trainer:\n  enable_checkpointing: false\n")
    args = ["fit", "--config", DEMO, *TINY, "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.callbacks+=test_training.SeeCallbacks"]
    assert main([*args, "--config", str(off)]) == 0
    (run,) = (tmp_path / "runs" / "demo").iterdir()
    assert not (run / "results.json").exists() and not (run / "checkpoints").exists()
    names = json.loads((tmp_path / "callbacks.json").read_text())
    assert not {"Preemption", "ExactResume", "DataWait", "RecordWriter",
                "LogStepProgressBar"} & set(names), names
    assert "ModelCheckpoint" not in names
    assert main(args) == 0  # all on again: each is in the Trainer
    names = json.loads((tmp_path / "callbacks.json").read_text())
    assert names.count("ModelCheckpoint") == 2
    assert {"Preemption", "ExactResume", "DataWait", "RecordWriter"} <= set(names)


@pytest.mark.slow
def test_one_epoch_on_digits_writes_results_json(tmp_path):
    out = cli("fit", "--config", DEMO, *TINY, "--trainer.max_epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = results(tmp_path / "runs" / "demo")
    assert record["status"] == "finished" and record["arch"] == "resnext11_8x4d"
    assert record["recipe"] == "demo"
    model = record["model"]
    assert (model["depth"], model["cardinality"], model["bottleneck_width"]) == (11, 2, 2)
    assert model["num_classes"] == 10 and model["image_size"] == 16
    net = ResNeXtModule("resnext29_8x64d", 10, depth=11, cardinality=2, bottleneck_width=2)
    assert model["params"] == sum(p.numel() for p in net.model.parameters())
    assert model["macs"] > 0
    (epoch,) = record["epochs"]
    assert epoch["step"] == 1437 // 64  # stratified 80% of the 1,797 digits, drop_last
    for key in ("train/loss", "train/top1_err", "val/loss", "val/top1_err", "val/top5_err",
                "train/images_per_s"):
        assert math.isfinite(epoch[key]), key
    assert 0 <= epoch["val/top5_err"] <= epoch["val/top1_err"] <= 100
    assert record["best"]["val/top1_err"] == record["final"]["val/top1_err"] == \
        epoch["val/top1_err"]
    assert record["config"]["model"]["arch"] == "resnext11_8x4d"
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    (run,) = (tmp_path / "runs/demo").iterdir()  # runs/<run_name>/<run_id>
    assert record["run"] == {"id": run.name, "name": "demo"}
    assert (run / "config.yaml").exists() and (run / "checkpoints/last.ckpt").exists()


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def run_schedule(accumulate=1, **hparams):
    torch.manual_seed(0)
    record = RecordLR()
    module = ResNeXtModule("resnext29_8x64d", 10, depth=11, cardinality=2, bottleneck_width=1,
                           lr=0.8, **hparams)
    trainer = Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, limit_val_batches=0, callbacks=[record],
                      accumulate_grad_batches=accumulate, enable_model_summary=False)
    trainer.fit(module, SyntheticDataModule(num_train=80, batch_size=8, image_size=8))
    return record.lrs, trainer


def test_step_schedule_with_warmup_and_batch_scaling():
    lrs, _ = run_schedule(schedule="step", milestones=[1, 3], warmup_epochs=0.5)
    base = 0.8 * 8 / 256  # lr per 256 images x global batch 8
    assert len(lrs) == 40  # 10 steps per epoch x 4 epochs
    expected = {0: 0.0, 4: 0.8 * base, 5: base, 9: base, 10: 0.1 * base, 29: 0.1 * base,
                30: 0.01 * base, 39: 0.01 * base}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-6), step


def test_cosine_schedule_with_warmup():
    lrs, _ = run_schedule(schedule="cosine", warmup_epochs=1)
    base = 0.8 * 8 / 256
    assert lrs[5] == pytest.approx(0.5 * base)
    assert lrs[10] == pytest.approx(base)
    assert lrs[25] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 1.5 / 3)))
    assert lrs[39] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 2.9 / 3)))


def test_triangular_schedule_with_accumulation():
    # 2 batches per optimizer step: global batch 16, 5 optimizer steps per epoch
    lrs, trainer = run_schedule(accumulate=2, schedule="triangular", peak_epoch=2)
    base = 0.8 * 16 / 256
    per_step = lrs[::2]
    assert trainer.global_step == 20 and len(per_step) == 20
    assert per_step[0] == pytest.approx(1e-4 * base)    # ffcv-imagenet's start, not 0
    assert per_step[5] == pytest.approx((1e-4 + (1 - 1e-4) * 0.5) * base)  # epoch 1 of 2 up
    assert per_step[10] == pytest.approx(base)           # the peak
    assert per_step[15] == pytest.approx(0.5 * base)     # half way down


def test_no_weight_decay_on_bn_and_bias():
    groups = []

    class Grab(Callback):
        def on_train_start(self, trainer, module):
            groups.extend(trainer.optimizers[0].param_groups)

    module = ResNeXtModule("resnext29_8x64d", 10, depth=11, bottleneck_width=1,
                           no_bn_weight_decay=True, weight_decay=1e-4)
    Trainer(accelerator="cpu", fast_dev_run=1, logger=False, callbacks=[Grab()],
            enable_progress_bar=False).fit(module, SyntheticDataModule(batch_size=8,
                                                                        image_size=8))
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    bn = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(id(m.weight) in ids and id(m.bias) in ids for m in bn)
    assert id(module.model.fc.bias) in ids and id(module.model.fc.weight) not in ids
    assert all(p.ndim == 4 or p is module.model.fc.weight for p in decay["params"])


@pytest.mark.slow
def test_resume_from_last_continues_step_and_lr(tmp_path):
    common = ["fit", "--config", DEMO, *TINY, "--model.schedule=step", "--model.milestones=[2]",
              "--model.warmup_epochs=0", "--trainer.limit_train_batches=3",
              "--trainer.limit_val_batches=2"]
    # the first run stops after 2 of its 4 epochs (as a preempted job would), the second resumes
    first = cli(*common, "--trainer.max_epochs=4", "--trainer.max_steps=6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = cli(*common, "--trainer.max_epochs=4", "--ckpt_path=last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(list((tmp_path / "runs/demo").iterdir())) == 1  # continued in place
    record = results(tmp_path / "runs" / "demo")
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2, 3]
    assert [e["step"] for e in record["epochs"]] == [3, 6, 9, 12]
    lrs = [e["lr"] for e in record["epochs"]]  # the lr of each epoch's last step
    base = 0.4 * 64 / 256
    assert lrs == pytest.approx([base, base, 0.1 * base, 0.1 * base])


@pytest.mark.slow
def test_records_state_only_what_happened(tmp_path, monkeypatch, capsys):
    """A step-limited run (max_epochs unset, 7 steps of 3 per epoch) validated every 2nd epoch:
    only epoch 1 holds val numbers, `final` names it, the cosine schedule spans the 7 steps,
    and "16-mixed" on a CPU is recorded as the bf16 it ran. Then `validate` of its checkpoint
    carries the checkpoint's training facts, `test` of it records test/* (the same numbers:
    the demo's test split is its val split), and `validate` without weights says it scores an
    untrained network, whose record a table never puts in a cell with the real evaluation."""
    from resnext_lit.cli import main
    from resnext_lit.experiments.cells import summarize
    from resnext_lit.experiments.records import load_local
    from resnext_lit.experiments.table import build_tables, markdown

    short = [*TINY, "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    out = cli("fit", "--config", DEMO, *short, "--trainer.max_epochs=null",
              "--trainer.max_steps=7", "--trainer.check_val_every_n_epoch=2",
              "--trainer.precision=16-mixed", "--run_name=trained", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = results(tmp_path / "runs" / "trained")
    assert [(e["epoch"], e["step"], "val/top1_err" in e) for e in rec["epochs"]] == \
        [(0, 3, False), (1, 6, True), (2, 7, False)]
    assert rec["final"] == {"val/top1_err": rec["epochs"][1]["val/top1_err"],
                            "val/top5_err": rec["epochs"][1]["val/top5_err"], "epoch": 1}
    base = 0.4 * 64 / 256
    assert [e["lr"] for e in rec["epochs"]] == pytest.approx(
        [base * 0.5 * (1 + math.cos(math.pi * s / 7)) for s in (2, 5, 6)])  # each epoch's last
    assert (rec["max_epochs"], rec["max_steps"], rec["precision"]) == (-1, 7, "bf16-mixed")
    assert rec["code"] == code_version()  # this checkout's commit, dirty or not

    def evaluate(*argv) -> str:  # in-process, as `python -m resnext_lit` runs it: its stderr
        assert main([argv[0], "--config", DEMO, *short, *argv[1:]]) == 0
        return capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    ckpt = next(Path("runs/trained").rglob("last.ckpt"))
    capsys.readouterr()
    assert "untrained" not in evaluate("validate", f"--ckpt_path={ckpt}", "--run_name=scored")
    assert "scoring an untrained network" in evaluate("validate", "--run_name=untrained")
    facts = results(tmp_path / "runs" / "scored")
    assert (facts["evaluated"], facts["max_epochs"], facts["max_steps"]) == (str(ckpt), -1, 7)
    assert facts["trained"]["run"] == rec["run"]
    assert facts["trained"]["global_step"] == 6  # last.ckpt: saved at the last validation
    evaluate("test", f"--ckpt_path={ckpt}", "--run_name=tested", "--trainer.limit_test_batches=1")
    test = results(tmp_path / "runs" / "tested")  # the demo's test split is its val split
    assert test["stage"] == "test" and set(test["final"]) == {"test/top1_err", "test/top5_err",
                                                               "test/loss"}
    assert test["final"]["test/top1_err"] == facts["final"]["val/top1_err"]
    blank = results(tmp_path / "runs" / "untrained")
    assert (blank["evaluated"], blank["trained"], blank["max_epochs"]) == ("untrained", None, None)
    assert summarize(blank)["stage"] == "validate (untrained)"
    text = markdown(build_tables(load_local(tmp_path / "runs")))
    assert "validate (untrained)" in text and "(n=2)" not in text


def test_the_code_version_is_a_commit_and_its_state_or_says_there_is_none(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                              "--untracked-files=no"], capture_output=True, text=True).stdout
    assert code_version() == {"commit": head, "dirty": bool(changed.strip())}
    assert code_version(tmp_path) == "not a git checkout"


BAD_INPUTS = [
    (["--model.arch=resnext50_32x4"], "unknown model 'resnext50_32x4'; closest: resnext50_32x4d"),
    (["--model.lr=0"], '"model.lr": Not of type PositiveFloat'),
    (["--data.init_args.batch_size=-4"], '"data.batch_size": Not of type PositiveInt'),
    (["--model.schedule=step", "--model.milestones=[1,9]", "--trainer.max_epochs=5"],
     "model.milestones [1, 9] must lie inside (0, trainer.max_epochs=5)"),
    (["--model.schedule=poly"], '"model.schedule": Expected a typing.Literal'),
    (["--model.widht=3"], "unrecognized arguments: --model.widht=3"),
    (["--model.cardinality=0"], "cardinality must be an integer >= 1, got 0"),
    (["--global_batch_size=100", "--trainer.devices=3", "--trainer.strategy=ddp"],
     "global_batch_size=100 does not divide over 3 process(es) x 1 accumulation step(s)"),
    (["--model.label_smoothing=1.5"], "model.label_smoothing must be in [0, 1], got 1.5"),
    (["--model.momentum=0"], "model.nesterov needs model.momentum > 0, got 0.0"),  # demo: Nesterov
    (["--trainer.max_epochs=-1"], "trainer.max_epochs=-1 trains for ever: set trainer.max_steps"),
    # No option silently replaces the recipe's optimiser or schedule, and none is abbreviated.
    (["--optimizer=Adam"], "unrecognized arguments: --optimizer=Adam"),
    (["--lr_scheduler=StepLR"], "unrecognized arguments: --lr_scheduler=StepLR"),
    (["--trainer.max_epoch=3"], "unrecognized arguments: --trainer.max_epoch=3"),
]
# Checks that need the training set's size: after the start-up lines (scale, run), before any
# training step, one error line and nothing of the run written.
AFTER_DATA = [
    (["--data.init_args.batch_size=5000"],
     "data.batch_size=5000 per device x 1 device(s) leaves no full training batch"),
    (["--trainer.max_epochs=-1", "--trainer.max_steps=5", "--model.warmup_epochs=2"],
     "model.warmup_epochs=2.0 must be in [0, trainer.max_steps=5 (0.227273 epochs))"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[a[0][0] for a in BAD_INPUTS])
def test_bad_input_is_one_line_before_training(tmp_path, monkeypatch, capsys, args, message):
    # In-process (the same `main` as `python -m resnext_lit`; tests/test_bad_inputs.py runs
    # most of its table this way too): a second each instead of a Python start-up with Lightning.
    from resnext_lit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", DEMO, *args]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert errors == [errors[-1]] and message in errors[-1], stderr[-2000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


@pytest.mark.parametrize("args, message", AFTER_DATA, ids=[a[0][-1] for a in AFTER_DATA])
def test_bad_input_known_once_the_data_is_loaded_is_one_line(tmp_path, monkeypatch, capsys,
                                                            args, message):
    from resnext_lit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", DEMO, *args]) == 2
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], stderr[-2000:]
    assert message in lines[-1] and "Traceback" not in stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no record, config, ckpt


def test_max_epochs_minus_one_with_max_steps_trains_without_blaming_warmup(tmp_path, monkeypatch):
    """`--trainer.max_epochs -1 --trainer.max_steps 2` with no warmup: trains its 2 steps (the
    old check compared warmup_epochs=0 with max_epochs=-1 and refused)."""
    from resnext_lit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", DEMO, *TINY, "--trainer.max_epochs=-1",
                 "--trainer.max_steps=2", "--trainer.limit_val_batches=1"]) == 0
    rec = results(tmp_path / "runs")
    assert (rec["status"], rec["max_steps"], rec["epochs"][-1]["step"]) == ("finished", 2, 2)


@pytest.mark.slow
def test_a_later_config_can_swap_an_ffcv_recipe_for_the_digits(tmp_path, monkeypatch, capsys):
    """`--config imagenet_paper.yaml --config trainer/ddp.yaml --config demo.yaml`: the digits
    replace the recipe's FFCV data. FFCV's `seed` (a NonNegativeInt) used to carry over as an
    object jsonargparse could not check against the digits' `seed` (a traceback), and
    `--print_config` could not write it."""
    swap = ["--config", str(ROOT / "configs/imagenet_paper.yaml"),
            "--config", str(ROOT / "configs/trainer/ddp.yaml"), "--config", DEMO]
    from resnext_lit.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:  # in-process: jsonargparse exits after printing
        main(["fit", *swap, "--print_config"])
    shown = capsys.readouterr()
    assert done.value.code == 0, shown.err[-3000:]
    assert "resnext_lit.data.digits.DigitsDataModule" in shown.out
    # A subprocess: the recipe's DDP strategy would leave a process group in this one.
    out = cli("fit", *swap, *TINY, "--trainer.accelerator=cpu", "--trainer.devices=1",
              "--trainer.fast_dev_run=1", cwd=tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
