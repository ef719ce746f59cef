"""ResNeXt-50 32x4d training throughput on one CUDA GPU; `resnext_lit/bench/gpu.sh` runs it.

    bash resnext_lit/bench/gpu.sh               # on the GPU machine: JSON + log to $OUT
    python -m resnext_lit bench gpu --dry-run   # the same code path on CPU, tiny, seconds

Parts, each written to the JSON as soon as it ends, each skipped with one line when the time
left (--budget-s) cannot hold it:
1. eager: synthetic uint8 batches (224 px, batch 256, pinned, normalised on the GPU), bf16-mixed,
   channels_last; the raw loop vs `Trainer.fit`, interleaved, >= 5 runs each (`loop.py`). The
   module's training step has no per-step device sync (its non-finite check reads a device
   flag every 50 steps), so Lightning's side runs the same sync-free step as the raw loop.
2. compiled: a second module with the same weights whose network is compiled in place, as the
   module's `compile=True` does (`nn.Module.compile`, here with `dynamic=False`: a new shape
   recompiles static); the first fit's extra time is the compile time, reported apart; then
   the raw loop vs Lightning again. The eager module stays as it was, for part 3.
3. end-to-end at 176 px: Lightning fed by `FFCVDataModule` vs by synthetic batches of the same
   size, compiled when part 2 compiled and time allows (a new shape recompiles), else eager.
   The JPEG set and its .beton are generated on this machine's cores first; the FFCV loader's
   own rate (no training) is measured too, to tell a slow loader from a slow consumer.
Model FLOP utilisation = img/s x 3 x 2 x MACs / 790 TFLOP/s (the H200's dense bf16 rate measured
on the lent machine; MACs measured by `complexity`). Goals (issue 6): >= 5,000 img/s at 224 px;
Lightning >= 0.95x raw; FFCV-fed >= 0.9x synthetic.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from .common import Report, interleave, render, torch_threads, write
from .loop import InMemoryBatches, StepClock, lightning_run, make_module, raw_run

PEAK_FLOPS = 790e12  # H200 dense bf16, measured on the lent machine (shared/PAPER.md)
GPU = dict(arch="resnext50_32x4d", num_classes=1000, res=224, e2e_res=176, batch_size=256,
           warmup_steps=4, timed_steps=12, e2e_windows=5, e2e_window_steps=8, repeats=5,
           num_images=8192, precision="bf16-mixed", budget_s=390)
DRY = dict(arch="resnext29_8x64d", depth=11, cardinality=2, bottleneck_width=4, num_classes=4,
           res=32, e2e_res=32, batch_size=8, warmup_steps=1, timed_steps=2, e2e_windows=5,
           e2e_window_steps=1, repeats=5, num_images=48, precision="bf16-mixed", budget_s=None)
GOAL_IMAGES_PER_S = 5000
# Seconds each part is expected to need, beyond the compilation times measured on the way.
EAGER_S, COMPILED_RUNS_S, E2E_S = 60, 30, 90
WATCHDOG_GRACE_S = 30  # after the budget; gpu.sh's own timeout comes later still


class Budget:
    """Time for all parts; None: no limit (the dry run's: a rehearsal runs every part, however
    slow or busy the machine, or its test would miss what it skipped)."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()


def import_ffcv() -> str | None:
    """None when ffcv imports, else why not (one line)."""
    try:
        importlib.import_module("setuptools")  # Python 3.12 has no distutils; ffcv imports it
    except ImportError:
        pass
    try:
        importlib.import_module("ffcv")
        importlib.import_module("ffcv.libffcv")  # the compiled part, with its shared libraries
    except Exception as err:  # ImportError, OSError for a missing .so, ...
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


class GPUBench:
    def __init__(self, cfg: dict, dry_run: bool, out: Path, data_dir: str, use_compile: bool):
        self.cfg, self.dry_run, self.out, self.data_dir = cfg, dry_run, out, data_dir
        self.use_compile = use_compile
        self.cuda = torch.cuda.is_available() and not dry_run
        self.device = "cuda" if self.cuda else "cpu"
        self.accelerator = "gpu" if self.cuda else "cpu"
        self.sync = torch.cuda.synchronize if self.cuda else None
        self.trainer_kwargs = {"benchmark": True} if self.cuda else {}
        self.budget = Budget(cfg["budget_s"])
        self.report = Report("gpu", dry_run, {
            **cfg, "dry_run": dry_run, "device": self.device,
            "device_name": torch.cuda.get_device_name(0) if self.cuda else "cpu",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if self.cuda
            else None, "channels_last": True, "peak_flops": PEAK_FLOPS,
            "cores": os.cpu_count(), "flops_per_image": "3 x 2 x MACs (forward + backward)"})
        self.compiled_module = None  # part 2's, once it compiled

    # -- bookkeeping -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[gpu-bench {self.budget.elapsed():5.0f}s] {text}", flush=True)

    def save(self) -> None:
        write(self.out, self.report.record())

    def fits(self, part: str, needed_s: float) -> bool:
        if self.budget.left() >= needed_s:
            return True
        line = (f"{part}: skipped, {self.budget.left():.0f} s of the {self.budget.seconds:.0f} s "
                f"budget left and it needs about {needed_s:.0f} s")
        self.say(line)
        self.report.note(line)
        return False

    def part(self, name: str, fn) -> None:
        self.say(f"{name}: start")
        try:
            fn()
        except Exception as err:  # one part failing must not lose the others' figures
            traceback.print_exc()
            self.report.note(f"{name}: failed: {type(err).__name__}: {err}".splitlines()[0])
        self.save()
        self.say(f"{name}: done")

    def measure(self, name: str, values: list[float], res: int, **extra) -> None:
        flops = 6 * self.macs[res]
        mfu = sum(values) / len(values) * flops / PEAK_FLOPS
        entry = self.report.measure(name, values, "img/s", res=res, **extra)
        # Full precision: on a CPU rehearsal MFU is ~1e-6, which 4 decimals would round to 0.
        entry["mfu"] = entry["median"] * flops / PEAK_FLOPS
        entry["mean_mfu"] = mfu
        if self.cuda:
            entry["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        self.say(f"{name}: {entry['median']:,.0f} img/s (median of {len(values)}), "
                 f"MFU {entry['mfu']:.1%}")

    # -- the parts ---------------------------------------------------------------------------
    def setup(self) -> None:
        import logging

        from resnext_lit.models import complexity

        # Lightning announces its devices at every fit (dozens here): keep the log readable.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        cfg = self.cfg
        torch.manual_seed(0)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = self.cuda
        self.module = make_module(cfg, channels_last=True)
        self.macs = {r: complexity(self.module.model, r)["macs"]
                     for r in {cfg["res"], cfg["e2e_res"]}}
        self.report.settings["macs"] = self.macs
        self.data = InMemoryBatches(cfg["batch_size"], cfg["res"], cfg["num_classes"], steps=1,
                                    pin=self.cuda)

    def clock(self, warmup: int | None = None, window: int | None = None, windows: int = 1):
        cfg = self.cfg
        return StepClock(warmup or cfg["warmup_steps"], window or cfg["timed_steps"], windows,
                         self.sync)

    def runs(self, module, data, clock, suffix: str) -> dict:
        prec = self.cfg["precision"]
        return {f"raw_{suffix}": lambda: raw_run(module, data, clock, self.device, prec),
                f"lightning_{suffix}": lambda: lightning_run(
                    module, data, clock, self.accelerator, prec, **self.trainer_kwargs)}

    def eager(self) -> None:
        clock = self.clock()
        runs = self.runs(self.module, self.data, clock, "eager")
        values = interleave(runs, self.cfg["repeats"], warmup=1)
        for name, vals in values.items():
            self.measure(name, vals, self.cfg["res"])
        self.report.ratio(f"lightning / raw (eager, {self.cfg['res']} px)", "lightning_eager",
                          "raw_eager", (">=", 0.95))

    def compiled(self) -> None:
        res, prec = self.cfg["res"], self.cfg["precision"]
        clock = self.clock()
        # nn.Module.compile has no public undo: compile a second module with the same weights,
        # so the eager one stays eager (for part 3, and after a compile that failed).
        module = make_module(self.cfg, channels_last=True)
        module.load_state_dict(self.module.state_dict())
        module.model.compile(dynamic=False)  # as configure_model's, plus static shapes
        first = lightning_run(module, self.data, clock, self.accelerator, prec,
                              **self.trainer_kwargs)
        step_s = self.cfg["batch_size"] / first
        self.compile_s = sum(clock.warmup_times) - step_s * len(clock.warmup_times)
        self.report.settings[f"compile_seconds_{res}"] = round(self.compile_s, 1)
        self.say(f"torch.compile: {self.compile_s:.0f} s (first steps minus steady steps)")
        self.compiled_module = module
        values = interleave(self.runs(module, self.data, clock, "compiled"),
                            self.cfg["repeats"], warmup=1)
        for name, vals in values.items():
            self.measure(name, vals, res)
        self.report.ratio(f"lightning / raw (compiled, {res} px)", "lightning_compiled",
                          "raw_compiled", (">=", 0.95))

    def end_to_end(self) -> None:
        cfg, res = self.cfg, self.cfg["e2e_res"]
        why = import_ffcv()
        if why is not None:
            line = f"FFCV-fed part skipped: ffcv cannot be imported here ({why})"
            self.say(line)
            self.report.note(line)
            return
        from .imagenet_like import ensure_dataset
        from .loader import loader_epoch

        cores = os.cpu_count() or 1
        start = time.perf_counter()
        data = ensure_dataset(self.data_dir, cfg["num_images"], tiny=self.dry_run,
                              workers=cores, num_classes=cfg["num_classes"])
        self.report.settings["e2e_dataset"] = {**data.stats,
                                               "seconds": round(time.perf_counter() - start, 1)}
        mode = "compiled" if self.compiled_module is not None and self.fits(
            "compiled end-to-end (eager instead)", E2E_S + 1.5 * self.compile_s) else "eager"
        module = self.compiled_module if mode == "compiled" else self.module
        workers = max(1, cores - 1)  # one core stays with the training loop
        ffcv = ffcv_one_loader(str(data.beton), str(data.beton), batch_size=cfg["batch_size"],
                               res=res, num_workers=workers)
        loader = ffcv.train_dataloader()
        compile_start = time.perf_counter()
        loader_epoch(loader)  # numba compiles the pipeline on the first epoch
        self.report.settings["ffcv_compile_seconds"] = round(time.perf_counter() - compile_start)
        self.report.measure("ffcv_loader_only", [loader_epoch(loader) for _ in range(5)],
                            "img/s", res=res, workers=workers)
        windows, window = cfg["e2e_windows"], cfg["e2e_window_steps"]
        synthetic = InMemoryBatches(cfg["batch_size"], res, cfg["num_classes"], steps=1,
                                    pin=self.cuda)
        for name, source in ((f"synthetic_{res}_{mode}", synthetic),
                             (f"ffcv_{res}_{mode}", ffcv)):
            clock = self.clock(window=window, windows=windows)
            lightning_run(module, source, clock, self.accelerator, cfg["precision"],
                          max_epochs=100, **self.trainer_kwargs)
            self.measure(name, clock.window_rates, res, warmup_steps=clock.warmup_steps,
                         warmup_step_s=[round(t, 2) for t in clock.warmup_times])
            if source is synthetic and mode == "compiled" and res != cfg["res"]:
                step_s = cfg["batch_size"] / clock.images_per_s()  # the new shape recompiled
                self.report.settings[f"compile_seconds_{res}"] = round(
                    sum(clock.warmup_times) - step_s * len(clock.warmup_times), 1)
        self.report.ratio(f"ffcv-fed / synthetic ({res} px, {mode}, Lightning)",
                          f"ffcv_{res}_{mode}", f"synthetic_{res}_{mode}", (">=", 0.9))
        self.report.ratio("ffcv loader alone / synthetic training", "ffcv_loader_only",
                          f"synthetic_{res}_{mode}", None,
                          why="> 1: the loader alone outruns the GPU's appetite")

    def run(self) -> Report:
        self.part("setup", self.setup)
        if not hasattr(self, "module"):
            return self.report
        if self.fits("eager", EAGER_S):
            self.part("eager", self.eager)
        if not self.use_compile:
            self.report.note("compiled part skipped: " + ("dry run (torch.compile on CPU takes "
                             "minutes; --compile forces it)" if self.dry_run else "--no-compile"))
        elif self.fits("compiled", COMPILED_RUNS_S + 150):
            self.part("compiled", self.compiled)
        if self.fits("end-to-end", E2E_S):
            self.part("end-to-end", self.end_to_end)
        best = [n for n in ("lightning_compiled", "lightning_eager")
                if n in self.report.measurements]
        if best:
            self.report.target(f"{best[0]} at {self.cfg['res']} px, batch "
                               f"{self.cfg['batch_size']}", best[0], (">=", GOAL_IMAGES_PER_S),
                               why="NVIDIA's ResNeXt101-32x4d: 1,211 img/s AMP on one A100")
        self.save()
        return self.report


def ffcv_one_loader(*args, **kwargs):
    """An `FFCVDataModule` whose train loader is built once: FFCV compiles each new Loader's
    pipeline with numba (seconds), and every `Trainer.fit` asks for a new one."""
    from resnext_lit.data.ffcv import FFCVDataModule

    class OneLoaderFFCV(FFCVDataModule):
        _loader = None

        def train_dataloader(self):
            if self._loader is None:
                self._loader = super().train_dataloader()
            return self._loader

    return OneLoaderFFCV(*args, **kwargs)


def _watchdog(seconds: float, bench: GPUBench) -> threading.Timer:
    """A hung part (a compile, a loader) must not cost the figures already measured."""
    def fire():
        print(f"[gpu-bench] watchdog: {seconds:.0f} s passed; saving and stopping", flush=True)
        bench.report.note(f"stopped by the watchdog after {seconds:.0f} s")
        bench.save()
        os._exit(124)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_lit bench gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny model and data: the same code path in seconds")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time for all parts (default: 390 on a GPU; none for --dry-run)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default $OUT/gpu.json, else runs/bench/gpu.json)")
    p.add_argument("--data-dir", default=None, help="where the FFCV part generates its data")
    p.add_argument("--compile", dest="use_compile", action="store_true", default=None)
    p.add_argument("--no-compile", dest="use_compile", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    cfg = dict(DRY if args.dry_run else GPU)
    cfg["budget_s"] = args.budget_s or cfg["budget_s"]
    out_dir = Path(os.environ.get("OUT") or "runs/bench")
    out = args.out or out_dir / f"gpu{'_dry' if args.dry_run else ''}.json"
    data_dir = args.data_dir or ("runs/bench/data" if args.dry_run else "/tmp/resnext_bench")
    use_compile = (not args.dry_run) if args.use_compile is None else args.use_compile
    bench = GPUBench(cfg, args.dry_run, out, data_dir, use_compile)
    watchdog = (_watchdog(cfg["budget_s"] + WATCHDOG_GRACE_S, bench)
                if cfg["budget_s"] is not None else None)
    try:
        # The CPU rehearsal runs one thread (see `torch_threads`); a GPU run keeps the default.
        with torch_threads(1 if args.dry_run else None):
            report = bench.run()
    finally:
        if watchdog is not None:
            watchdog.cancel()
    render([report.record()])
    print(f"wrote {out}")
    return 0


# gpu.sh runs this module directly: no CLI import (the GPU machine lacks the CLI's extras).
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
