"""The records `python -m resnext_lit table` reads: every `results.json` under a folder, or the
runs of a W&B sweep converted to the same shape (`record_from_wandb`).

    records = load_local("runs/sweeps/demo-cardinality")
    records = load_wandb("my-team/resnext-lit/abc123")   # needs the W&B server
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def load_local(runs_dir: str | Path) -> list[dict]:
    """Every results.json under `runs_dir` (links followed, each file once)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"--runs {root}: no such folder")
    paths = {p.resolve() for p in root.rglob("results.json")}
    if not paths:
        raise UserError(f"no results.json under {root}: train with `python -m resnext_lit fit` "
                        "or run a sweep first")
    return one_per_run([_read_record(p) for p in sorted(paths)])


def one_per_run(records: list[dict]) -> list[dict]:
    """Each run once: of records with one run id (a run folder copied elsewhere), the one that
    got furthest. Records from before run ids are each their own run (one folder each)."""
    by_id: dict[str, dict] = {}
    others = []
    for record in records:
        run_id = (record.get("run") or {}).get("id")
        if run_id is None:
            others.append(record)
        elif len(record.get("epochs") or []) >= len(by_id.get(run_id, {}).get("epochs") or []):
            by_id[run_id] = record
    return others + list(by_id.values())


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable results.json ({err})") from None


def record_from_wandb(run) -> dict:
    """A W&B public-API run -> the results.json shape (our logger's config keys + history)."""
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    summary = dict(run.summary)

    def last(key):
        value = summary.get(key)
        return value.get("last", value.get("min")) if isinstance(value, dict) else value
    epochs: dict[int, dict] = {}
    for row in run.history(keys=None, pandas=False) if hasattr(run, "history") else []:
        if row.get("epoch") is not None:
            epochs.setdefault(int(row["epoch"]), {"epoch": int(row["epoch"])}).update(
                {k: v for k, v in row.items() if "/" in k and v is not None})
    state = {"finished": "finished", "running": "running", "killed": "interrupted"}
    model_keys = ("depth", "cardinality", "bottleneck_width", "form", "stem", "num_classes",
                  "params", "macs", "image_size")
    # A run logged before run ids gave its W&B run a new id at every resume: such a W&B run may
    # be one piece of a run, so it is never a seed of a cell (shown apart, as its own stage).
    run_id, stage = config.get("run_id"), config.get("stage")
    if run_id is None and stage in (None, "fit"):
        stage = "W&B piece"
    return {"status": state.get(run.state, "failed"), "stage": stage,
            "run": {"id": run_id, "name": config.get("run_name")} if run_id else None,
            "arch": config.get("arch"), "model": {k: config.get(k) for k in model_keys},
            "dataset": config.get("dataset"), "recipe": config.get("recipe"),
            "seed": config.get("seed_everything"), "config": config,
            "max_epochs": config.get("max_epochs"), "max_steps": config.get("max_steps"),
            "precision": config.get("precision"), "scale": _nested(config, "scale"),
            "resolution": _nested(config, "resolution"),
            "epochs": [epochs[e] for e in sorted(epochs)],
            "final": {"val/top1_err": last("val/top1_err"), "val/top5_err": last("val/top5_err")},
            "best": {"val/top1_err": (summary.get("val/top1_err") or {}).get("min")
                     if isinstance(summary.get("val/top1_err"), dict) else None}}


def _nested(config: dict, key: str) -> dict | None:
    """`config[key]` as a dict, also when a logger flattened it to "key/sub" or "key.sub"."""
    if isinstance(config.get(key), dict):
        return config[key]
    flat = {k[len(key) + 1:]: v for k, v in config.items()
            if k[:len(key) + 1] in (f"{key}/", f"{key}.")}
    return flat or None


def load_wandb(sweep_path: str) -> list[dict]:  # needs a W&B server; not testable offline
    import wandb

    from ..wandb_access import has_credentials, reachable

    url = wandb.setup().settings.base_url
    if not has_credentials(url) or not reachable(url):  # fail in one line, not after retries
        raise UserError(f"--sweep needs W&B credentials and {url}; use --runs offline")
    sweep = wandb.Api(timeout=30).sweep(sweep_path)
    return one_per_run([record_from_wandb(run) for run in sweep.runs])
