"""What every benchmark shares: repeats after warm-up, medians, ratios with goals, the JSON
record and the Rich table.

    from resnext_lit.bench.common import Report, interleave
    report = Report("model", tiny=False, settings={...})
    times = interleave({"ours": run_ours, "torchvision": run_tv}, repeats=7, warmup=1)
    report.measure("ours", times["ours"], unit="s/step", lower_is_better=True)
    report.ratio("ours / torchvision", "ours", "torchvision", goal=("<=", 1.02), paired=times)

Machines here are shared and noisy, so a result is a ratio of two things measured in the same
run, interleaved repeat by repeat, never an absolute time alone. The ratio is the median of the
per-repeat ratios (each pair ran back to back, so load that comes and goes between repeats
cancels); the ratio of the two medians is recorded beside it, and the ratio of each one's best
repeat ("best/best": other processes only ever slow a repeat down, so the best repeats are the
least disturbed).
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

GOAL_OPS = {">=": operator.ge, "<=": operator.le}


def median(values) -> float:
    return float(statistics.median(values))


def interleave(runs: dict[str, Callable[[], float]], repeats: int, warmup: int = 1,
               on_repeat: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Call each run `warmup` times (discarded), then `repeats` rounds of one call each.

    Each call returns its own measurement (seconds, images/s, ...). The order inside a round
    alternates (A B C, then C B A, ...) so no contender always runs right after the same one.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            values[name].append(float(runs[name]()))
        if on_repeat is not None:
            on_repeat(r)
    return values


@contextmanager
def torch_threads(n: int | None):
    """Run with `n` intra-op threads, then restore. One thread per process is the default for the
    CPU model and loop benchmarks: on a shared 2-core machine, OpenMP threads that spin-wait
    against another process's threads can make a step 100x slower (seen here); one thread
    cannot, and both contenders get the same."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Report:
    """One benchmark's record: settings, measurements, ratios (with goals) and notes."""

    def __init__(self, name: str, tiny: bool, settings: dict):
        self.name, self.tiny, self.settings = name, tiny, dict(settings)
        self.measurements: dict[str, dict] = {}
        self.ratios: list[dict] = []
        self.notes: list[str] = []
        self._start = time.perf_counter()

    def measure(self, name: str, values: list[float], unit: str, warmup: int = 1,
                lower_is_better: bool = False, **extra) -> dict:
        """Record the repeats of one contender; its median is the figure."""
        if not values:
            raise UserError(f"{self.name}: no repeat measured for {name}")
        entry = {"median": median(values), "repeats": [float(v) for v in values],
                 "n": len(values), "warmup": warmup, "unit": unit,
                 "lower_is_better": lower_is_better, **extra}
        self.measurements[name] = entry
        return entry

    def ratio(self, label: str, candidate: str, baseline: str, goal: tuple[str, float] | None,
              why: str = "") -> dict:
        """candidate / baseline, from the per-repeat pairs (see the module docstring)."""
        a, b = self.measurements[candidate], self.measurements[baseline]
        pairs = [x / y for x, y in zip(a["repeats"], b["repeats"], strict=True) if y > 0]
        value = median(pairs) if pairs else float("nan")
        best = min if a["lower_is_better"] else max  # each one's least disturbed repeat
        entry = {"label": label, "candidate": candidate, "baseline": baseline, "value": value,
                 "ratio_of_medians": a["median"] / b["median"] if b["median"] else float("nan"),
                 "ratio_of_best": best(a["repeats"]) / best(b["repeats"]),
                 "pairs": pairs, "unit": f"{a['unit']} / {b['unit']}",
                 "goal": None, "met": None, "why": why}
        if goal is not None:
            op, target = goal
            entry["goal"] = f"{op} {target:g}"
            entry["met"] = bool(GOAL_OPS[op](value, target))
        self.ratios.append(entry)
        return entry

    def target(self, label: str, name: str, goal: tuple[str, float], why: str = "") -> dict:
        """An absolute goal on one measurement's median (e.g. >= 5,000 img/s on one H200)."""
        m = self.measurements[name]
        op, value = goal
        entry = {"label": label, "candidate": name, "baseline": None, "value": m["median"],
                 "unit": m["unit"], "goal": f"{op} {value:g}",
                 "met": bool(GOAL_OPS[op](m["median"], value)), "why": why}
        self.ratios.append(entry)
        return entry

    def note(self, text: str) -> None:
        self.notes.append(text)

    def record(self) -> dict:
        from resnext_lit.facts import environment

        hardware, versions = environment()
        return {"benchmark": self.name, "tiny": self.tiny,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - self._start, 1),
                "hardware": hardware, "versions": versions, "settings": self.settings,
                "measurements": self.measurements, "ratios": self.ratios, "notes": self.notes}


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def render(records: list[dict], console=None) -> None:
    """Print each benchmark's measurements and its ratios with their goals (Rich tables)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for rec in records:
        table = Table(title=f"bench {rec['benchmark']}{' (tiny)' if rec['tiny'] else ''}: "
                            f"medians after warm-up ({rec['seconds']:.0f} s)")
        for column in ("contender", "median", "unit", "repeats", "spread"):
            table.add_column(column, justify="left" if column in ("contender", "unit")
                             else "right")
        for name, m in rec["measurements"].items():
            spread = (max(m["repeats"]) - min(m["repeats"])) / m["median"] if m["median"] else 0
            table.add_row(name, _fmt(m["median"]), m["unit"], str(m["n"]), f"{spread:.0%}")
        console.print(table)
        ratios = Table(title=f"bench {rec['benchmark']}: ratios (same run) and goals")
        for column in ("ratio", "value", "goal", "met", "best/best"):
            ratios.add_column(column)
        for r in rec["ratios"]:
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            value = _fmt(r["value"]) if r["baseline"] is None else f"{r['value']:.3f}"
            best = f"{r['ratio_of_best']:.3f}" if "ratio_of_best" in r else ""
            ratios.add_row(r["label"], value, r["goal"] or "(reported)", met, best)
        console.print(ratios)
        for text in rec["notes"]:
            console.print(f"  note: {text}")


def write(path: Path, data: dict) -> None:
    from resnext_lit.atomic import write_json_atomic

    write_json_atomic(Path(path), data)
