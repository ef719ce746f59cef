"""Which of the paper's claims hold in our runs, and how sure we are: `table`'s "Claims".

    python -m resnext_lit table --runs runs --out tables     # tables.md ends with the claims
    verdicts = judge(build_tables(records))                   # a Verdict per claim and recipe

The paper's claims (arXiv:1611.05431; its figures as the model registry holds them) are data,
`CLAIMS`: each names the cells it compares as `table` keys them (table, row, column), ordered as
the paper says the error falls, with the paper's size of each step. One comparison is our
difference, the first cell's error minus the second's (positive where the paper says so), with
a 95% interval over seeds: Welch's t for two cells (their spreads may differ), Student's t for a
cell against a published error the zoo does not train (Wide ResNet). A claim's word:

- holds: every comparison's interval excludes zero in the paper's direction;
- contradicted: some comparison's interval excludes zero the other way;
- not resolved: otherwise; each such comparison says how many seeds per cell would resolve the
  paper's step (where the paper gives none, ours) at our spread;
- not run: a cell has no finished run, or one (no interval without a spread): named.

Only cells `table` itself fills count: a smoke run, a run cut short or another recipe is kept
apart by `cells.py` and never enters a claim. Claims are judged per recipe, as tables are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..models import model_entry
from ..models.registry import FIG7_WIDE, TABLE3, TABLE3_SETTINGS

CONFIDENCE = 0.95
MAX_SEEDS = 1000  # "more than this many seeds" is as good as never
HOLDS, CONTRADICTED, NOT_RESOLVED, NOT_RUN = ("holds", "contradicted", "not resolved",
                                              "not run")


@dataclass(frozen=True)
class Step:
    """One comparison: `higher` should have the higher error (a cell, or a published error of
    a network we do not train), `lower` the lower; `paper`: the paper's difference, if given."""
    label: str
    higher: tuple[str, str] | float  # (row, column) of the claim's table, or an error in %
    lower: tuple[str, str]
    paper: float | None


@dataclass(frozen=True)
class Claim:
    key: str
    source: str      # where the paper says it
    text: str        # what it says
    table: str       # the table kind holding the cells ("Table 3", ...; "Other" for the demo)
    steps: tuple[Step, ...]
    why_not: str | None = None  # a claim this repo cannot test, and why


def _err(arch: str, key: str = "top1_err") -> float | None:
    return model_entry(arch)["paper"].get(key)


def _step(higher: tuple[str, str], lower: tuple[str, str], label: str,
          paper_higher: float | None, paper_lower: float | None) -> Step:
    """A step between two cells, the paper's difference from its two errors."""
    paper = None if None in (paper_higher, paper_lower) else round(paper_higher - paper_lower, 2)
    return Step(label, higher, lower, paper)


def _table3(depth: int) -> Claim:
    archs, row = TABLE3[depth], f"{depth} layers"
    columns = [f"{c}x{d}d" for c, d in TABLE3_SETTINGS]
    steps = tuple(_step((row, a), (row, b), f"{a} > {b}", _err(x), _err(y))
                  for a, b, x, y in zip(columns, columns[1:], archs, archs[1:]))
    return Claim(f"table3-{depth}", "Table 3", f"at ~constant complexity, {depth}-layer error "
                 f"falls as cardinality rises ({' > '.join(columns)})", "Table 3", steps)


def _wide_resnet(dataset: str, published: float) -> list[Step]:
    return [Step(f"Wide ResNet {published} > {arch} ({dataset})", published, (arch, dataset),
                 round(published - _err(arch, f"{dataset}_err"), 2))
            for arch in ("resnext29_8x64d", "resnext29_16x64d")]


# Fig. 7's pairs of equal size: C x 64d against 1 x (the width that matches its parameters).
_FIG7_PAIRS = [(f"resnext29_1x{d}d", f"resnext29_{c}x64d") for c, d in FIG7_WIDE.items()]

CLAIMS = (
    _table3(50),
    _table3(101),
    Claim("table3-resnet50", "Table 3", "ResNeXt-50 32x4d beats ResNet-50 (1x64d) by 1.7 points",
          "Table 3", (_step(("50 layers", "1x64d"), ("50 layers", "32x4d"), "1x64d > 32x4d",
                            _err("resnext50_1x64d"), _err("resnext50_32x4d")),)),
    Claim("table4-deeper", "Table 4", "at 2x complexity, more cardinality beats going deeper "
          "(ResNet-200)", "Table 4",
          tuple(_step(("resnet200", "top-1"), (arch, "top-1"), f"ResNet-200 > {arch}",
                      _err("resnet200"), _err(arch))
                for arch in ("resnext101_2x64d", "resnext101_64x4d"))),
    Claim("table4-wider", "Table 4", "at 2x complexity, more cardinality beats going wider "
          "(ResNet-101 1x100d)", "Table 4",
          tuple(_step(("resnet101_wide", "top-1"), (arch, "top-1"), f"1x100d > {arch}",
                      _err("resnet101_wide"), _err(arch))
                for arch in ("resnext101_2x64d", "resnext101_64x4d"))),
    Claim("table5-320", "Table 5", "testing at 320 px lowers the error of both networks",
          "Table 5",
          tuple(_step((arch, "top-1 224"), (arch, "top-1 320"), f"{arch} 224 > 320 px",
                      _err(arch), _err(arch, "top1_err_320"))
                for arch in ("resnet200", "resnext101_64x4d"))),
    Claim("table7-wrn", "Table 7", "on CIFAR, ResNeXt-29 8x64d and 16x64d beat Wide ResNet "
          "(its published 4.17% / 20.50%)", "Table 7",
          tuple(_wide_resnet("cifar10", 4.17) + _wide_resnet("cifar100", 20.50))),
    Claim("fig7", "Fig. 7", "at equal model size on CIFAR-10, raising cardinality beats raising "
          "width", "Fig. 7",
          tuple(Step(f"{w} > {c}", (w, "cifar10"), (c, "cifar10"), None)
                for w, c in _FIG7_PAIRS)),
    Claim("sec5.1-shortcuts", "Sec. 5.1", "without shortcuts ResNeXt-50 loses less than "
          "ResNet-50 (26.1 vs 31.2)", "Table 3", (),
          why_not="the zoo has no network without shortcuts"),
)
# The CPU demo's own question (sweeps/demo_cardinality.yaml): Fig. 7's cardinality series
# shrunk to the digits, C moving at d = 4. Not the paper's networks, data or size.
_DEMO = [(f"resnext11_{c}x4d", f"{c}x4d") for c in (1, 2, 4, 8)]
DEMO_CLAIM = Claim(
    "demo-cardinality", "demo", "digits (CPU demo): error falls as cardinality rises, "
    "ResNeXt-11 C = 1, 2, 4, 8 at d = 4", "Other",
    # Rows as `table` names them in "Other settings": "<data>: <network> <C>x<d>d depth 11".
    tuple(Step(f"{a} > {b}", (f"digits: {x} {a} depth 11", "top-1"),
               (f"digits: {y} {b} depth 11", "top-1"), None)
          for (x, a), (y, b) in zip(_DEMO, _DEMO[1:])))


@dataclass
class Result:
    """One step, judged: our difference and its interval, the paper's, the word."""
    label: str
    word: str
    ours: float | None = None
    low: float | None = None
    high: float | None = None
    paper: float | None = None
    n: tuple[int, int] = (0, 0)
    seeds_needed: int | None = None
    why: str = ""


@dataclass
class Verdict:
    claim: Claim
    table: str  # the table title (which recipe), or "" when no table of its kind was built
    word: str
    steps: list[Result] = field(default_factory=list)
    why: str = ""


def t_quantile(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df)) if math.isfinite(df) else 1.959963984540054


def welch(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int):
    """(difference a - b, half-width of its 95% interval, Welch-Satterthwaite df)."""
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return mean_a - mean_b, 0.0, math.inf
    df = (va + vb) ** 2 / ((va ** 2 / (n_a - 1) if va else 0) + (vb ** 2 / (n_b - 1) if vb else 0))
    return mean_a - mean_b, t_quantile(df) * se, df


def seeds_to_resolve(effect: float, sd_a: float, sd_b: float | None) -> int | None:
    """Seeds per cell at which an interval of our spread excludes zero for `effect` (None: more
    than MAX_SEEDS, or no effect to resolve). `sd_b` None: a cell against a fixed number."""
    if not effect:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if sd_b is None:
            half = t_quantile(n - 1) * sd_a / math.sqrt(n)
        else:
            half = welch(0.0, sd_a, n, 0.0, sd_b, n)[1]
        if half < abs(effect):
            return n
    return None


def _word(low: float, high: float) -> str:
    return HOLDS if low > 0 else CONTRADICTED if high < 0 else NOT_RESOLVED


def judge_step(step: Step, cells: dict[tuple[str, str], dict]) -> Result:
    """One comparison from the table's cells ((row, column) -> the cell's CSV entry)."""
    sides = ([] if isinstance(step.higher, float) else [step.higher]) + [step.lower]
    missing = [f"{row} {column}".strip() for row, column in sides
               if (cells.get((row, column)) or {}).get("ours_mean") is None]
    if missing:
        return Result(step.label, NOT_RUN, paper=step.paper,
                      why=f"no finished run of {', '.join(missing)}")
    lower = cells[step.lower]
    single = [f"{row} {column}".strip() for row, column in sides
              if cells[(row, column)]["n"] < 2]
    if single:
        return Result(step.label, NOT_RUN, paper=step.paper,
                      why=f"one run of {', '.join(single)}: no interval without a second seed")
    if isinstance(step.higher, float):
        ours = step.higher - lower["ours_mean"]
        half = t_quantile(lower["n"] - 1) * lower["ours_std"] / math.sqrt(lower["n"])
        n, spreads = (0, lower["n"]), (lower["ours_std"], None)
    else:
        higher = cells[step.higher]
        ours, half, _ = welch(higher["ours_mean"], higher["ours_std"], higher["n"],
                              lower["ours_mean"], lower["ours_std"], lower["n"])
        n, spreads = (higher["n"], lower["n"]), (higher["ours_std"], lower["ours_std"])
    result = Result(step.label, _word(ours - half, ours + half), ours, ours - half, ours + half,
                    step.paper, n)
    if result.word == NOT_RESOLVED:
        effect = step.paper if step.paper else ours
        result.seeds_needed = seeds_to_resolve(effect, *spreads)
        whose = "the paper's" if step.paper else "our"
        if round(effect, 2) == 0:
            result.why = f"{whose} step is 0.00: no number of seeds resolves it"
        elif result.seeds_needed:
            result.why = (f"{result.seeds_needed} seeds per cell would resolve {whose} step of "
                          f"{abs(effect):.2f} at our spread")
        else:
            result.why = (f"more than {MAX_SEEDS} seeds per cell would be needed for {whose} "
                          f"step of {abs(effect):.2f}")
    return result


def judge(tables, claims=(*CLAIMS, DEMO_CLAIM)) -> list[Verdict]:
    """Every claim against every table of its kind (one per recipe); a claim with no such
    table is not run, and says so. The demo's claim only where the demo's digits ran."""
    verdicts = []
    for claim in claims:
        kinds = [t for t in tables if t.title.startswith(claim.table)]
        if claim is DEMO_CLAIM and not any(
                c.get("dataset") == "digits" for t in kinds for c in t.cells):
            continue
        if claim.why_not:
            verdicts.append(Verdict(claim, "", NOT_RUN, why=claim.why_not))
            continue
        if not kinds:
            verdicts.append(Verdict(claim, "", NOT_RUN, why=f"no run of {claim.table}"))
        for table in kinds:
            cells = {(c["row"], c["column"]): c for c in table.cells}
            steps = [judge_step(step, cells) for step in claim.steps]
            words = {s.word for s in steps}
            word = next(w for w in (NOT_RUN, CONTRADICTED, NOT_RESOLVED, HOLDS)
                        if w in words)
            why = "; ".join(f"{s.label}: {s.why}" for s in steps if s.word == NOT_RUN)
            verdicts.append(Verdict(claim, table.title, word, steps, why))
    return verdicts


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def step_text(s: Result) -> str:
    """'1x64d > 2x40d: +0.83 [+0.41, +1.25], paper +0.90: holds'."""
    if s.word == NOT_RUN:
        return f"{s.label}: not run ({s.why})"
    text = f"{s.label}: {_number(s.ours)} [{_number(s.low)}, {_number(s.high)}]"
    text += f", paper {_number(s.paper)}" if s.paper is not None else ", paper: no number"
    return text + f": {s.word}" + (f" ({s.why})" if s.why else "")


def markdown(verdicts: list[Verdict]) -> str:
    """The "Claims" section of tables.md (and the console)."""
    lines = ["### Claims: does the paper's claim hold in our runs?", "",
             "| claim | source | recipe | verdict | our difference [95% interval], the paper's |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        recipe = v.table.rsplit("[", 1)[-1].rstrip("]") if "[" in v.table else "-"
        detail = "; ".join(step_text(s) for s in v.steps) or v.why
        lines.append(f"| {v.claim.text} | {v.claim.source} | {recipe} | **{v.word}** | "
                     f"{detail} |")
    lines += ["", "A difference is the first network's top-1 error minus the second's (%): "
              "positive where the paper says the second is better; the interval is 95% over "
              "seeds (Welch's t; against a published error, Student's t). holds: every "
              "interval above zero; contradicted: one below; not resolved: one includes zero; "
              "not run: a cell without two finished runs.", ""]
    return "\n".join(lines)


def rows(verdicts: list[Verdict]) -> list[dict]:
    """claims.csv: one row per step of a judged claim (one per claim that was not run)."""
    out = []
    for v in verdicts:
        base = {"claim": v.claim.key, "source": v.claim.source, "text": v.claim.text,
                "table": v.table, "verdict": v.word}
        for s in v.steps or [Result("", v.word, why=v.why)]:
            out.append({**base, "step": s.label, "ours": s.ours, "low": s.low, "high": s.high,
                        "paper": s.paper, "n_higher": s.n[0], "n_lower": s.n[1],
                        "step_verdict": s.word, "seeds_needed": s.seeds_needed, "why": s.why})
    return out
