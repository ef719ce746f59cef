"""The options of `python -m resnext_lit write-beton`: its parser and `WriteOptions`, apart
from the writer so that `write-beton --help` answers before FFCV and OpenCV load.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...errors import UserError

DEFAULT_MAX_SIDE = 500  # ffcv-imagenet's max_res
DEFAULT_WRITE_MODE = "proportion"
DEFAULT_COMPRESS_PROBABILITY = 0.5  # share of images stored as JPEG in `proportion` mode
DEFAULT_JPEG_QUALITY = 90
WRITE_MODES = ("proportion", "jpg", "raw")
MAX_FFCV_SIDE = 65535  # FFCV stores width and height as uint16


@dataclass(frozen=True)
class WriteOptions:
    """How records are stored; recorded as "write" in the sidecar."""

    max_side: int = DEFAULT_MAX_SIDE
    write_mode: str = DEFAULT_WRITE_MODE
    compress_probability: float = DEFAULT_COMPRESS_PROBABILITY
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    seed: int = 0  # seeds the JPEG-or-raw choice of each record

    def __post_init__(self):
        if not 1 <= self.max_side <= MAX_FFCV_SIDE:
            raise UserError(f"max_side must be in 1..{MAX_FFCV_SIDE} (FFCV stores uint16 "
                            f"sizes), got {self.max_side}")
        if self.write_mode not in WRITE_MODES:
            raise UserError(f"write_mode must be one of {', '.join(WRITE_MODES)}, "
                            f"got {self.write_mode!r}")
        if not 0 <= self.compress_probability <= 1:
            raise UserError(f"compress_probability must be in [0, 1], "
                            f"got {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def jpeg_share(self) -> float:
        return {"jpg": 1.0, "raw": 0.0}.get(self.write_mode, self.compress_probability)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m resnext_lit write-beton",
        description="ImageFolder trees -> FFCV .beton files (+ .json sidecars, skip reports); "
                    "--adopt: a sidecar for a beton written elsewhere (ffcv-imagenet).",
        epilog="exit status: 0 written (skipped files are listed, not fatal), 1 files skipped "
               "under --strict or the write failed (full disk, I/O error), 2 bad arguments, 130 "
               "interrupted; never a half-written .beton")
    p.add_argument("--train", help="train ImageFolder: ROOT/<class>/<image>")
    p.add_argument("--val", help="val ImageFolder, or ImageNet's flat val folder with --val-labels")
    p.add_argument("--val-labels",
                   help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--synsets", help="devkit meta.mat, or one WNID per line in ILSVRC2012_ID order")
    p.add_argument("--classes", help="for --val without --train, or --adopt: the train folder, "
                   "train sidecar, or a text file of names (LOC_synset_mapping.txt)")
    p.add_argument("--out", help="output folder for <split>.beton (needed with --train/--val)")
    p.add_argument("--adopt", nargs="+", metavar="BETON",
                   help="write our sidecar for existing betons (classes named by index unless "
                        "--classes); one that has a sidecar is checked and left as is")
    p.add_argument("--dataset", metavar="NAME",
                   help="what tables call this data (e.g. digits); default: 1000 classes are "
                        "imagenet, others the beton's file name")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="only the first N decodable images of each class, train and val "
                        "(a quick trial)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help="longer side cap in px (default %(default)s)")
    p.add_argument("--write-mode", default=DEFAULT_WRITE_MODE, choices=WRITE_MODES,
                   help="JPEG or raw pixels per record (default %(default)s)")
    p.add_argument("--compress-probability", type=float, default=DEFAULT_COMPRESS_PROBABILITY,
                   help="share stored as JPEG in proportion mode (default %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                   help="default %(default)s")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seeds the JPEG-or-raw choice per record")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 1, no .beton) if any file is skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (scan and write)")
    return p
