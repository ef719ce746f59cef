"""Benchmarks with baselines measured in the same run: `python -m resnext_lit bench ...`.

    python -m resnext_lit bench all                    # loader, loop, model: ~5-10 min on 2 cores
    python -m resnext_lit bench loader --out runs/bench/loader.json
    python -m resnext_lit bench model --tiny           # seconds: what the tests run
    python -m resnext_lit bench gpu --dry-run          # the GPU script's code path, on CPU

- loader: FFCVDataModule vs torchvision ImageFolder + DataLoader vs a raw libjpeg-turbo decode
  ceiling (`loader.py`). Goals: ffcv >= 3.0x torchvision, >= 0.8x the ceiling.
- loop: `Trainer.fit` vs a hand-written PyTorch loop, same model, data, optimiser, precision
  (`loop.py`). Goal: >= 0.95x the raw loop's images/s.
- model: our form-(c) ResNeXt vs torchvision's identical network, forward + backward; forms
  (a) and (b) vs (c) (`model.py`). Goal: <= 1.02x torchvision's time.
- gpu: ResNeXt-50 training throughput on one CUDA GPU (`gpu.py`; run by `resnext_lit/bench/gpu.sh`).

Each prints Rich tables and writes one JSON file (default `runs/bench/<name>.json`): hardware,
versions, settings, every repeat, medians, and each ratio with its goal. Exit status 0 even when
a goal is missed (the table and the JSON say so); 2 for bad arguments. The runs the README
quotes are kept in `resnext_lit/bench/results/`.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from ..errors import UserError
from .common import render, write

BENCHMARKS = ("loader", "loop", "model")
DEFAULT_DIR = Path("runs/bench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_lit bench",
                                description="Speed benchmarks against same-run baselines.")
    p.add_argument("which", choices=(*BENCHMARKS, "all", "gpu"),
                   help="which benchmark; `all` runs loader, loop and model")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes: seconds per benchmark (for tests; figures mean little)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default runs/bench/<which>[_tiny].json)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per contender (>= 5; default 7, tiny 5)")
    p.add_argument("--data-dir", default=str(DEFAULT_DIR / "data"),
                   help="where the loader benchmark caches its generated JPEGs and .beton")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["gpu"]:  # its own options (--dry-run, --budget-s, ...)
        from . import gpu

        return gpu.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 5:
        raise UserError(f"bench needs --repeats >= 5 (a median of fewer is noise), "
                        f"got {args.repeats}")
    names = BENCHMARKS if args.which == "all" else (args.which,)
    out = args.out or DEFAULT_DIR / f"{args.which}{'_tiny' if args.tiny else ''}.json"
    start = time.perf_counter()
    records = []
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        kwargs = {"data_dir": args.data_dir} if name == "loader" else {}
        report = module.run(tiny=args.tiny, repeats=args.repeats, **kwargs)
        records.append(report.record())
        render(records[-1:])
    if len(records) == 1:
        data = records[0]
    else:
        data = {"benchmark": "all", "tiny": args.tiny,
                "seconds": round(time.perf_counter() - start, 1),
                "benchmarks": {rec["benchmark"]: rec for rec in records}}
    write(out, data)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return 0
