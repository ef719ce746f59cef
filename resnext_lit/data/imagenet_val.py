"""ImageNet's official validation layout: one flat folder of ILSVRC2012_val_XXXXXXXX.JPEG files
plus a ground-truth list, mapped onto the train split's class indices (its sorted synset folders).

    python -m resnext_lit write-beton --train ~/imagenet/train --val ~/imagenet/val \
        --val-labels ~/imagenet/LOC_val_solution.csv --out ~/betons            # Kaggle copy
    python -m resnext_lit write-beton --train ~/imagenet/train --val ~/imagenet/val \
        --val-labels ILSVRC2012_validation_ground_truth.txt --synsets meta.mat --out ~/betons

Two ground-truth formats:
- Kaggle `LOC_val_solution.csv`: `ImageId,PredictionString` rows; the first word of the
  prediction string is the synset (WNID), e.g. `ILSVRC2012_val_00008726,n02119789 255 142 ...`.
- The ILSVRC2012 devkit's `data/ILSVRC2012_validation_ground_truth.txt`: line i holds the
  ILSVRC2012_ID (1-1000) of image ILSVRC2012_val_{i:08d}. IDs map to WNIDs through the devkit's
  `data/meta.mat`, or a text file with one WNID per line where line k is ILSVRC2012_ID k (the
  devkit's order, which is NOT the sorted order of the folder names).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_EXTENSIONS

DEVKIT_STEM = "ILSVRC2012_val_{:08d}"  # line i (1-based) of the devkit ground truth
NUM_ILSVRC_CLASSES = 1000  # the leaf synsets of meta.mat carry ILSVRC2012_ID 1..1000


def read_synsets(path: str | os.PathLike) -> list[str]:
    """WNIDs in ILSVRC2012_ID order (entry k-1 is ID k), from meta.mat or a one-per-line file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"synset mapping {path} does not exist")
    if path.suffix == ".mat":
        from scipy.io import loadmat  # scipy comes with scikit-learn; only this format needs it

        try:
            synsets = loadmat(str(path), squeeze_me=True)["synsets"]
            by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                     if 1 <= int(s["ILSVRC2012_ID"]) <= NUM_ILSVRC_CLASSES}
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise UserError(f"{path} is not the devkit's meta.mat (no synsets/WNID: "
                            f"{err})") from None
        wnids = [by_id.get(k) for k in range(1, len(by_id) + 1)]
        if not wnids or None in wnids:
            raise UserError(f"{path}: ILSVRC2012_IDs are not 1..{len(by_id)}")
        return wnids
    words = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not words:
        raise UserError(f"synset list {path} is empty")
    return words


def read_val_labels(labels_file: str | os.PathLike,
                    synsets_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Map image stem (file name without extension) -> class name (WNID)."""
    labels_file = Path(labels_file).expanduser()
    if not labels_file.is_file():
        raise UserError(f"validation labels {labels_file} do not exist")
    if labels_file.suffix.lower() == ".csv":
        with open(labels_file, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"{labels_file} is not a LOC_val_solution.csv "
                            "(header ImageId,PredictionString)")
        labels = {}
        for number, row in enumerate(rows[1:], start=2):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{labels_file}:{number}: no synset in {row!r}")
            labels[row[0].strip()] = row[1].split()[0]
        return labels
    if synsets_file is None:
        raise UserError(f"{labels_file.name} holds ILSVRC2012_IDs; pass --synsets with the "
                        "devkit's meta.mat (or a WNID-per-line file in ID order)")
    wnids = read_synsets(synsets_file)
    labels = {}
    for number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        try:
            class_id = int(line)
        except ValueError:
            raise UserError(f"{labels_file}:{number}: {line!r} is not an ILSVRC2012_ID") from None
        if not 1 <= class_id <= len(wnids):
            raise UserError(f"{labels_file}:{number}: ILSVRC2012_ID {class_id} is not in "
                            f"1..{len(wnids)} of {synsets_file}")
        labels[DEVKIT_STEM.format(number)] = wnids[class_id - 1]
    return labels


def flat_val_samples(folder: str | os.PathLike, labels: dict[str, str], classes: list[str]
                     ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """`(path, class index)` for the images of a flat folder, sorted by name, and
    `(path, reason)` for image files the ground truth does not mention."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"validation folder {folder} does not exist or is not a folder")
    index_of = {name: i for i, name in enumerate(classes)}
    unknown = sorted({wnid for wnid in labels.values() if wnid not in index_of})
    if unknown:
        raise UserError(f"validation labels name classes that are not train classes: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    samples, unlabelled = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)):
            continue
        wnid = labels.get(Path(entry.name).stem)
        if wnid is None:
            unlabelled.append((entry.path, "no ground-truth label for this file"))
        else:
            samples.append((entry.path, index_of[wnid]))
    if not samples:
        raise UserError(f"no image in {folder} has a label in the ground truth "
                        f"(expected names like {DEVKIT_STEM.format(1)}.JPEG)")
    return samples, unlabelled
