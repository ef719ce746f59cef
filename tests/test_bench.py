"""The benchmarks run (tiny sizes) and record what they claim; speed goals are never asserted.

    .venv/bin/python -m pytest -q tests/test_bench.py

Each benchmark's JSON must hold hardware, versions, settings, >= 5 repeats per contender, finite
positive medians and ratios, and the goal next to each ratio. The GPU script's `--dry-run` runs
its whole code path on CPU, in a subprocess where `import wandb` fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_lit.bench import main as bench_main
from resnext_lit.bench.common import Report, interleave
from resnext_lit.bench.imagenet_like import ensure_dataset
from resnext_lit.bench.loader import random_resized_crop
from resnext_lit.bench.loop import StepClock
from resnext_lit.bench.model import check_same_network, torchvision_cifar_resnext
from resnext_lit.cli import main as cli_main
from resnext_lit.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_record(rec: dict, name: str, contenders: set[str], goals: dict[str, str]) -> None:
    """The JSON structure every benchmark shares, and this one's contenders and goals."""
    assert rec["benchmark"] == name
    assert rec["hardware"]["cpus"] >= 1
    assert torch.__version__.startswith(rec["versions"]["torch"])
    assert rec["settings"]["repeats"] >= 5
    assert set(rec["measurements"]) >= contenders
    for m in rec["measurements"].values():
        assert m["n"] == len(m["repeats"]) >= 5
        assert all(finite_positive(v) for v in m["repeats"])
        assert m["median"] == pytest.approx(float(np.median(m["repeats"])))
    by_label = {r["label"]: r for r in rec["ratios"]}
    for label, goal in goals.items():
        ratio = by_label[label]
        assert ratio["goal"] == goal and isinstance(ratio["met"], bool)
        assert finite_positive(ratio["value"]) and len(ratio["pairs"]) >= 5
    for ratio in rec["ratios"]:
        assert finite_positive(ratio["value"])


def run_bench(which: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{which}.json"
    assert bench_main([which, "--tiny", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_loader_tiny(tmp_path):
    rec = run_bench("loader", tmp_path, "--data-dir", str(tmp_path / "data"))
    check_record(rec, "loader", {"ffcv", "ffcv_own_ops", "torchvision", "folder_datamodule",
                                 "ceiling", "ceiling_files"},
                 {"ffcv / torchvision": ">= 3", "ffcv / ceiling": ">= 0.8",
                  "ffcv seeded / ffcv's own ops": ">= 0.97"})
    stats = rec["settings"]["dataset"]
    assert stats["num_images"] == 96 and 0.05 < stats["bytes_per_pixel"] < 3
    assert 0.2 < rec["settings"]["beton_jpeg_share"] < 0.8  # `proportion` mode: about half
    assert rec["settings"]["workers"] >= 1 and "libjpeg-turbo" in rec["settings"]["ceiling_decoder"]
    costs = rec["settings"]["per_image_ms_one_core"]
    assert all(finite_positive(costs[k]) for k in ("beton_read_or_decode", "beton_crop_resize",
                                                   "pil_decode", "torchvision_transforms"))
    assert finite_positive(costs["bound"])


@pytest.mark.slow
def test_imagenet_like_set_is_cached_and_varied(tmp_path):
    first = ensure_dataset(tmp_path, num_images=24, tiny=True, workers=2, num_classes=3)
    files = sorted(first.train_dir.rglob("*.jpg"))
    assert len(files) == 24 and len({f.parent.name for f in files}) == 3
    sizes = {Image.open(f).size for f in files}
    assert len(sizes) > 5  # an ImageNet-like spread of sizes, not one size
    pixels = np.asarray(Image.open(files[0]), dtype=np.float32)
    assert pixels.std() > 10  # a photograph, not a flat colour
    stamp = files[0].stat().st_mtime_ns
    again = ensure_dataset(tmp_path, num_images=24, tiny=True, workers=2, num_classes=3)
    assert again.stats == first.stats and files[0].stat().st_mtime_ns == stamp  # reused


def test_loop_tiny(tmp_path):
    rec = run_bench("loop", tmp_path)
    check_record(rec, "loop", {"raw_loop", "lightning"}, {"lightning / raw_loop": ">= 0.97"})
    assert "train accuracy update" in rec["settings"]["raw_loop_step"]


def test_model_tiny(tmp_path):
    rec = run_bench("model", tmp_path)
    check_record(rec, "model", {"ours_50_32x4d", "torchvision_50_32x4d", "ours_cifar_c",
                                "torchvision_cifar", "form_a", "form_b", "form_c"},
                 {"ours / torchvision (ResNeXt-50 32x4d)": "<= 1.02",
                  "ours / torchvision (ResNeXt-11 2x4d)": "<= 1.02",
                  "form (a) / form (c) (ResNeXt-11 2x4d)": ">= 1"})
    assert rec["measurements"]["torchvision_50_32x4d"]["max_logit_diff"] < 1e-4


# torch.compile with a backend that counts dynamo's graphs and runs them as traced: the
# compiled part's code path in seconds (inductor on CPU takes minutes).
EAGER_BACKEND = ("import atexit, functools, torch; graphs = []; "
                 "torch.compile = functools.partial(torch.compile, "
                 "backend=lambda gm, inputs: graphs.append(gm) or gm.forward); "
                 "atexit.register(lambda: print('dynamo graphs:', len(graphs)))")


def gpu_dry_run(tmp_path: Path, blocked: tuple[str, ...],
                compile_eagerly: bool = False) -> tuple[dict, str]:
    """Run the GPU benchmark's --dry-run in a subprocess where `blocked` modules cannot import
    (as on the GPU machine, which has no wandb, and no ffcv unless .gpu/ was carried); with
    `compile_eagerly`, its compiled part too, on `EAGER_BACKEND`."""
    out = tmp_path / "gpu.json"
    extra = ", '--compile'" if compile_eagerly else ""
    code = (f"import sys; sys.modules.update(dict.fromkeys({list(blocked)!r})); "
            + (EAGER_BACKEND + "; " if compile_eagerly else "")
            + "from resnext_lit.bench.gpu import main; "
            f"sys.exit(main(['--dry-run', '--out', {str(out)!r}, "
            f"'--data-dir', {str(tmp_path / 'data')!r}{extra}]))")
    env = {**os.environ, "OUT": str(tmp_path / "unused")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_gpu_dry_run_without_wandb(tmp_path):
    """`resnext_lit/bench/gpu.sh`'s Python, on CPU: every part but torch.compile, FFCV included."""
    rec, _ = gpu_dry_run(tmp_path, ("wandb",))
    check_record(rec, "gpu", {"raw_eager", "lightning_eager", "ffcv_loader_only",
                              "synthetic_32_eager", "ffcv_32_eager"},
                 {"lightning / raw (eager, 32 px)": ">= 0.95",
                  "ffcv-fed / synthetic (32 px, eager, Lightning)": ">= 0.9"})
    assert rec["settings"]["dry_run"] and rec["settings"]["macs"]["32"] > 0
    assert all(finite_positive(m["mfu"]) for n, m in rec["measurements"].items()
               if n != "ffcv_loader_only")
    assert any("compiled part skipped" in note for note in rec["notes"])
    assert not any("failed" in note for note in rec["notes"]), rec["notes"]


@pytest.mark.slow
def test_gpu_dry_run_compiles_and_skips_the_ffcv_part_in_one_line_without_ffcv(tmp_path):
    rec, stdout = gpu_dry_run(tmp_path, ("wandb", "ffcv"), compile_eagerly=True)
    check_record(rec, "gpu", {"raw_eager", "lightning_eager", "raw_compiled",
                              "lightning_compiled"},
                 {"lightning / raw (compiled, 32 px)": ">= 0.95"})
    assert int(stdout.split("dynamo graphs:")[1].split()[0]) >= 1  # it did go through dynamo
    assert rec["settings"]["compile_seconds_32"] is not None
    assert not any(name.startswith("ffcv") for name in rec["measurements"])
    skipped = [n for n in rec["notes"] if n.startswith("FFCV-fed part skipped")]
    assert len(skipped) == 1 and skipped[0] in stdout
    assert not any("failed" in note for note in rec["notes"]), rec["notes"]


def test_shell_scripts_parse():
    for script in ("resnext_lit/bench/gpu.sh", "scripts/prepare_gpu_carry.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0


def test_too_few_repeats_is_a_one_line_error(capsys):
    assert cli_main(["bench", "loop", "--repeats", "3"]) == 2
    assert "bench needs --repeats >= 5" in capsys.readouterr().err


def test_ratio_is_the_median_of_paired_repeats():
    report = Report("unit", tiny=True, settings={})
    report.measure("a", [2.0, 40.0, 6.0, 8.0, 10.0], "s", lower_is_better=True)
    report.measure("b", [1.0, 10.0, 3.0, 4.0, 5.0], "s", lower_is_better=True)
    ratio = report.ratio("a / b", "a", "b", ("<=", 1.02))
    assert ratio["value"] == 2.0 and ratio["pairs"] == [2.0, 4.0, 2.0, 2.0, 2.0]
    assert ratio["ratio_of_medians"] == 2.0 and ratio["met"] is False
    assert ratio["ratio_of_best"] == 2.0  # times: the smallest of each
    assert report.target("a fast", "b", (">=", 4.0))["met"] is True


def test_interleave_discards_warmup_and_alternates_order():
    calls = []
    runs = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "xyz"}
    values = interleave(runs, repeats=2, warmup=1)
    assert calls == list("xyz") + list("xyz") + list("zyx")
    assert values == {"x": [4.0, 9.0], "y": [5.0, 8.0], "z": [6.0, 7.0]}


def test_step_clock_excludes_warmup_steps():
    clock = StepClock(warmup_steps=2, window_steps=3, windows=2)
    clock.start()
    for _ in range(clock.steps):
        clock.tick(images=4)
    assert len(clock.warmup_times) == 2 and len(clock.window_rates) == 2
    assert clock.images_per_s() > 0
    with pytest.raises(RuntimeError, match="shorter than its warm-up"):
        short = StepClock(warmup_steps=3, window_steps=2)
        short.start()
        short.tick(4)
        short.images_per_s()


def test_random_resized_crop_stays_inside_and_in_range():
    rng = np.random.default_rng(0)
    for height, width in ((375, 500), (500, 333), (40, 300), (17, 17)):
        for _ in range(200):
            top, left, h, w = random_resized_crop(rng, height, width)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert h >= 1 and w >= 1
    # A very wide image cannot host most crops: the fallback is its centre, at aspect 4/3.
    top, left, h, w = random_resized_crop(np.random.default_rng(1), 10, 1000, scale=(1, 1))
    assert (h, w) == (10, 13) and left == (1000 - 13) // 2


def test_torchvision_cifar_twin_is_the_same_network_and_a_mismatch_is_caught():
    ours = create_model("resnext29_8x64d", depth=11, cardinality=2, bottleneck_width=4)
    theirs = torchvision_cifar_resnext(depth=11, cardinality=2, bottleneck_width=4)
    assert check_same_network(ours, theirs, 16) < 1e-4
    wider = torchvision_cifar_resnext(depth=11, cardinality=4, bottleneck_width=4)
    with pytest.raises(RuntimeError):  # shapes differ: strict loading refuses
        check_same_network(ours, wider, 16)
