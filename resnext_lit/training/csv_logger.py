"""metrics.csv that holds the whole run, however many times it was resumed.

    trainer: {logger: {class_path: resnext_lit.training.csv_logger.CSVLogger}}   # the recipes'

Lightning's CSVLogger deletes a folder's metrics.csv when it starts in it ("Previous log files
in this directory will be deleted"), so a resumed run (`resnext_lit.run_identity`: same
folder) would keep only its last piece. This one carries the earlier rows over, and drops the
rows of steps the resumed run trains again (after a hard kill, the steps since the last
checkpoint), so each step appears once.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

METRICS_FILE = "metrics.csv"  # Lightning's name (ExperimentWriter.NAME_METRICS_FILE)


class CSVLogger(_LightningCSVLogger):
    """Lightning's `CSVLogger` that keeps the earlier rows of a resumed run's metrics.csv."""

    def __init__(self, save_dir: str = "runs", name: str | None = "lightning_logs",
                 version: int | str | None = None, **kwargs):
        # save_dir, name and version are the run's (`resnext_lit.training.run` sets them).
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self._earlier_rows = 0  # rows carried over, until the first new step trims them

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / METRICS_FILE
        # Moved aside first, so a kill at any point leaves the history in one of the two files:
        # `.earlier` exists only until the carried-over rows are written back.
        earlier = path.with_name(METRICS_FILE + ".earlier")
        if path.exists() and not earlier.exists():
            os.replace(path, earlier)
        rows = _read_rows(earlier)
        path.unlink(missing_ok=True)  # a half-written merge; `.earlier` has it all
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": not here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = super().experiment
        if rows:
            writer.metrics = rows
            writer.save()
        earlier.unlink(missing_ok=True)
        self._earlier_rows = len(rows)
        return writer

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self._earlier_rows and step is not None:
            self._earlier_rows = 0
            self.experiment.save()
            _drop_steps_from(Path(self.log_dir) / METRICS_FILE, step)
        super().log_metrics(metrics, step)


def _read_rows(path: Path) -> list[dict]:
    """A metrics.csv's rows, each without the columns it has no value in."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(file)]


def _drop_steps_from(path: Path, step: int) -> None:
    """Remove the rows of `step` and later (trained again after a resume), atomically."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames, list(reader)
    kept = [row for row in rows if int(float(row["step"])) < step]
    if len(kept) == len(rows):
        return
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(partial, path)
