"""`python -m resnext_lit summary`: the newest record, with the registry's word on its network."""

import json

from resnext_lit.experiments.summary import main, network_line


def record(depth, c, d, dataset, num_classes=10, **extra):
    model = dict(depth=depth, cardinality=c, bottleneck_width=d, form="c", num_classes=num_classes,
                 params=1_000_000, macs=2_000_000, image_size=16)
    return {"arch": "resnext11_8x4d", "model": model, "dataset": dataset, "status": "finished",
            "epochs": [{"epoch": 0, "val/top1_err": 9.5}], "best": {"val/top1_err": 9.5,
                                                                    "epoch": 0},
            "images_per_s": 100.0, "wall_time_s": 12.0, **extra}


def test_network_line_quotes_the_paper_only_for_its_networks_on_its_data():
    assert network_line(record(11, 8, 4, "digits")) == \
        "network: resnext11_8x4d, not in the paper (registered on digits)"
    assert network_line(record(29, 8, 64, "cifar100", 100)) == \
        "network: resnext29_8x64d (Table 7, Fig. 7); paper: 17.77% top-1 error on cifar100 at 32 px"
    assert network_line(record(50, 1, 64, "imagenet", 1000)).endswith(
        "paper: 23.90% top-1 error on imagenet at 224 px")  # ResNet-50, by its registered name
    assert "no paper figure for it on digits" in network_line(record(29, 8, 64, "digits"))
    assert "not a registered one" in network_line(record(11, 3, 4, "digits"))
    old = record(29, 16, 64, None)  # no dataset key: the data its network is registered on
    assert network_line(old).endswith("paper: 3.58% top-1 error on cifar10 at 32 px")


def test_summary_prints_the_newest_run(tmp_path, capsys):
    run = tmp_path / "demo" / "version_0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(record(11, 8, 4, "digits")))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resnext11_8x4d, not in the paper" in out and "9.50" in out


def test_a_run_without_validation_says_so_instead_of_blanks(tmp_path, capsys):
    """No validated epoch and no speed yet: the closing line says so, with no "None" or empty
    figures; a run validated before its last epoch names the epoch its final error is from."""
    run = tmp_path / "demo" / "a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(record(
        11, 8, 4, "digits", epochs=[{"epoch": 0, "train/loss": 2.0}], best=None,
        images_per_s=None)))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not validated yet, wall time 12 s" in out and "None" not in out
    assert "img/s," not in out
    (run / "results.json").write_text(json.dumps(record(
        11, 8, 4, "digits", final={"val/top1_err": 9.5, "epoch": 0},
        epochs=[{"epoch": 0, "val/top1_err": 9.5}, {"epoch": 1, "train/loss": 1.0}])))
    assert main([str(tmp_path)]) == 0
    assert "best val top-1 error 9.50% (epoch 0), final 9.50% (epoch 0), 100 img/s" in \
        capsys.readouterr().out


def test_the_newest_training_run_is_shown_unless_told_otherwise(tmp_path, capsys):
    """A `validate` written after the training run does not hide it; --stage picks."""
    import os

    fit, check = tmp_path / "demo" / "a", tmp_path / "demo" / "b"
    for folder, rec in ((fit, record(11, 8, 4, "digits")),
                        (check, record(11, 8, 4, "digits", stage="validate", epochs=[],
                                       best=None, final={"val/top1_err": 7.25, "epoch": None}))):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(rec))
    os.utime(fit / "results.json", (1, 1))  # the training run is the older one
    assert main([str(tmp_path)]) == 0
    unwrapped = capsys.readouterr().out.replace("\n", "")  # Rich wraps at the console width
    assert f"record: {fit / 'results.json'}" in unwrapped
    assert main([str(tmp_path), "--stage", "validate"]) == 0
    assert f"record: {check / 'results.json'}" in capsys.readouterr().out.replace("\n", "")
