"""Write ImageFolder trees to FFCV .beton files: `python -m resnext_lit write-beton`.

    python -m resnext_lit write-beton --train ~/imagenet/train --val ~/imagenet/val \
        --val-labels ~/imagenet/LOC_val_solution.csv --out ~/betons
    # -> ~/betons/train.beton, ~/betons/val.beton, each with a .json sidecar and a .skipped.tsv
    python -m resnext_lit write-beton --train ~/imagenet/train --out ~/trial --per-class 10
    python -m resnext_lit write-beton --adopt ~/ffcv/train_500_0.50_90.ffcv \
        ~/ffcv/val_500_0.50_90.ffcv --classes ~/imagenet/LOC_synset_mapping.txt

    from resnext_lit.data.beton import write_beton           # the same from Python
    write_beton("digits/train", "betons/train.beton", max_side=64)

Records are (image: RGBImageField, label: IntField), in ImageFolder order (classes sorted, files
sorted). Defaults are ffcv-imagenet's: longer side at most 500 px, `proportion` mode storing 50%
of the images as JPEG at quality 90 and the rest raw. The val split takes the train split's
class indices, from an ImageFolder tree or ImageNet's flat layout (see `imagenet_val`).
`--per-class N` writes the first N decodable images of each class (listing order) of every
split: a quick trial of the whole pipeline.

Every file is decoded once in a parallel scan first: truncated, zero-byte and undecodable files
are skipped and listed (path, reason) in `<beton>.skipped.tsv` and in the summary; CMYK,
grayscale, palette, RGBA and PNG-named-.jpg files become RGB. Skips do not fail the write (exit
status 0, printed, counted in the sidecar) because one bad file should not cost an hour of
ImageNet writing; `--strict` makes any skip fatal (exit status 1, no .beton). After the scans
of all splits and before any write, the output size is estimated (`processes.estimate_size`) and
printed with the free disk ("estimated 142.0 GB for train, 6.4 GB for val (free: 210.3 GB)");
too little free disk is a bad argument (below). A failed write (full disk, I/O error) exits
with status 1 and the worker's error as one line. Bad arguments exit with status 2 and one
line. The .beton is written as `<beton>.partial` and renamed only when
complete, so Ctrl-C, a crash or a full disk never leave a file under the final name; a rerun
replaces the stale partial file.

`--adopt BETON...` writes our sidecar for betons written elsewhere (ffcv-imagenet's
`write_imagenet.py`), from their metadata table, so `FFCVDataModule` checks them from then on;
a beton that already has a sidecar is checked against it and left as is (exit status 0), one
whose sidecar does not match it is an error (remove the sidecar to adopt the file anew).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...atomic import atomic_write, write_json_atomic
from ...errors import UserError
from ..imagenet_val import flat_val_samples, read_val_labels
from ..images import list_classes, list_image_folder
from .options import (
    DEFAULT_COMPRESS_PROBABILITY,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_SIDE,
    DEFAULT_WRITE_MODE,
    WriteOptions,
)
from .processes import (
    BetonRecords,
    Scanned,
    WriteFailed,
    estimate_size,
    ffcv_write,
    page_size,
    scan,
)
from .sidecar import FIELDS, SIDECAR_FORMAT, adopt, fingerprint, resolve_classes, sidecar_path

PARTIAL_SUFFIX, REPORT_SUFFIX = ".partial", ".skipped.tsv"
SUMMARY_LINES = 10  # skipped files printed in the summary; the report lists all
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class StrictSkipError(RuntimeError):
    """`strict=True` and some files were skipped; nothing was written under the final name."""


@dataclass
class WriteResult:
    beton: Path
    num_records: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
    estimated_bytes: int = 0  # `estimate_size` before the write


@dataclass
class ScannedSplit:
    """One split between the scan and the write: the records to write and their size."""

    split: str
    beton: Path
    classes: list[str]
    source: Path
    found: Scanned
    estimated_bytes: int


def _check_workers(workers: int | None) -> int:
    workers = os.cpu_count() if workers is None else workers
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    return workers


def _resolve_classes(classes, source: Path) -> list[str]:
    return list_classes(source) if classes is None else resolve_classes(classes)


def _check_per_class(per_class: int | None) -> None:
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be >= 1, got {per_class}")


@dataclass
class SplitPlan:
    """One split as listed, before any decoding: (path, label) samples, the class names, the
    files already skipped (a flat val file without a label) and the folder they came from."""
    samples: list
    classes: list[str]
    skipped: list
    source: Path


def _plan(source, classes, val_labels, synsets) -> SplitPlan:
    """One split's listing and labels, no decoding."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"input folder {source} does not exist or is not a folder")
    if val_labels is None:
        classes = _resolve_classes(classes, source)
        return SplitPlan(list_image_folder(source, classes), classes, [], source)
    if classes is None:
        raise UserError("the flat validation layout needs the train classes: pass --train "
                        "or --classes (train folder or train sidecar)")
    classes = _resolve_classes(classes, source)
    samples, unlabelled = flat_val_samples(source, read_val_labels(val_labels, synsets), classes)
    return SplitPlan(samples, classes, unlabelled, source)


def _check_output(beton: Path) -> None:
    try:
        beton.parent.mkdir(parents=True, exist_ok=True)
        probe = beton.parent / f".{beton.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to output folder {beton.parent} "
                        f"({err.strerror or err})") from None
    if beton.is_dir():
        raise UserError(f"output {beton} is a folder, expected a .beton file name")


def write_beton(source, out, *, classes=None, val_labels=None, synsets=None,
                max_side: int = DEFAULT_MAX_SIDE, write_mode: str = DEFAULT_WRITE_MODE,
                compress_probability: float = DEFAULT_COMPRESS_PROBABILITY,
                jpeg_quality: int = DEFAULT_JPEG_QUALITY, seed: int = 0,
                workers: int | None = None, strict: bool = False, progress: bool = True,
                split: str | None = None, per_class: int | None = None,
                dataset: str | None = None) -> WriteResult:
    """Write one split to `out` (a .beton path) with its sidecar and skip report.

    `classes`: the class names (list), a train ImageFolder or a train sidecar; default: the
    sorted sub-folders of `source`. `val_labels` (+ `synsets`): read `source` as ImageNet's flat
    validation layout. `per_class`: only the first that many decodable images of each class.
    `dataset`: what tables call the data ("digits"), kept in the sidecar.
    Raises ValueError for bad input or too little free disk, StrictSkipError under `strict`.
    """
    options = WriteOptions(max_side, write_mode, compress_probability, jpeg_quality, seed)
    workers = _check_workers(workers)
    _check_per_class(per_class)
    plan = _plan(source, classes, val_labels, synsets)
    beton = Path(out).expanduser()
    scanned = _scan_planned(plan, beton, options, workers, strict, progress,
                            split or beton.stem, per_class)
    _check_disk([scanned])
    return _write_scanned(scanned, options, workers, progress, per_class, dataset)


def _write_report(beton: Path, skipped) -> Path:
    report = Path(str(beton) + REPORT_SUFFIX)
    lines = ["# path\treason (files not written to " + beton.name + ")"]
    lines += [f"{path}\t{reason}" for path, reason in skipped]
    with atomic_write(report) as f:
        f.write("\n".join(lines) + "\n")
    return report


def _scan_first_per_class(samples, per_class: int, scan_some) -> Scanned:
    """The first `per_class` decodable samples of each class, in listing order: scan that many,
    then as many more of a class as were skipped, until each class has them or runs out."""
    queues = defaultdict(deque)
    for sample in samples:
        queues[sample[1]].append(sample)
    wanted = dict.fromkeys(queues, per_class)
    found = Scanned()
    while batch := [queue.popleft() for label, queue in queues.items()
                    for _ in range(min(wanted[label], len(queue)))]:
        more = scan_some(batch)
        for _, label in more.good:
            wanted[label] -= 1
        found.add(more)
    position = {path: i for i, (path, _) in enumerate(samples)}
    found.good.sort(key=lambda sample: position[sample[0]])
    return found


def _scan_planned(plan: SplitPlan, beton: Path, options: WriteOptions, workers: int,
                  strict: bool, progress: bool, split: str,
                  per_class: int | None = None) -> ScannedSplit:
    """Decode every planned file once (see `processes.scan`) and estimate the .beton's size."""
    samples, classes, skipped, source = plan.samples, plan.classes, plan.skipped, plan.source
    _check_output(beton)
    quality = options.jpeg_quality if options.jpeg_share else None  # JPEG sample: only if used

    def scan_some(some):
        return scan(some, options.max_side, workers, progress, split, quality)

    found = _scan_first_per_class(samples, per_class, scan_some) if per_class else \
        scan_some(samples)
    found.skipped = skipped + found.skipped
    if strict and found.skipped:
        _write_report(beton, found.skipped)
        raise StrictSkipError(f"{split}: {len(found.skipped)} files skipped and --strict is "
                              f"set; nothing written (see {beton}{REPORT_SUFFIX})")
    if not found.good:
        raise UserError(f"{split}: no decodable image in {source}")
    estimate = estimate_size(found, options.jpeg_share, workers, page_size(options.max_side))
    return ScannedSplit(split, beton, classes, source, found, estimate)


def _human(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.1f} kB"


def _check_disk(splits: list[ScannedSplit]) -> str:
    """The line "estimated <size> for <split>, ... (free: <size>)", or a ValueError if the free
    space of their folder (plus any stale .partial file, which the write replaces) is short of
    the estimate. No margin: the estimate counts FFCV's page overheads, and a write that still
    runs out fails cleanly (exit status 1, nothing under the final name)."""
    folder = splits[0].beton.parent
    stale = [Path(str(s.beton) + PARTIAL_SUFFIX) for s in splits]
    free = shutil.disk_usage(folder).free + sum(p.stat().st_size for p in stale if p.is_file())
    needed = sum(s.estimated_bytes for s in splits)
    each = ", ".join(f"{_human(s.estimated_bytes)} for {s.split}" for s in splits)
    if free < needed:
        raise UserError(f"not enough free disk in {folder}: estimated {each}, "
                        f"{_human(free)} free; nothing written")
    return f"estimated {each} (free: {_human(free)})"


def _write_scanned(scanned: ScannedSplit, options: WriteOptions, workers: int, progress: bool,
                   per_class: int | None = None, dataset: str | None = None) -> WriteResult:
    from ffcv.fields import IntField, RGBImageField

    start = time.perf_counter()
    beton, good, skipped, classes = (scanned.beton, scanned.found.good, scanned.found.skipped,
                                     scanned.classes)
    page = page_size(options.max_side)
    fields = {"image": RGBImageField(write_mode=options.write_mode,
                                     max_resolution=options.max_side,
                                     jpeg_quality=options.jpeg_quality,
                                     compress_probability=options.compress_probability),
              "label": IntField()}
    assert {name: type(f) for name, f in fields.items()} == FIELDS
    # Not `atomic_write`: FFCV's writer and its worker processes open the file by path (no file
    # object to hand them), and the name is fixed so the next run finds a killed run's partial
    # file, counts it as free disk (`_check_disk`) and replaces it; a per-process temporary
    # name would leave a killed 100 GB write behind for good.
    partial_path = beton.with_name(beton.name + PARTIAL_SUFFIX)
    partial_path.unlink(missing_ok=True)  # new inode: orphans of a killed run write elsewhere
    try:
        ffcv_write(partial_path, BetonRecords(good, options.max_side, options.seed), workers,
                   fields, page, progress, scanned.split)
        counts = np.bincount([label for _, label in good], minlength=len(classes)).tolist()
        info = {"format": SIDECAR_FORMAT, "split": scanned.split, "dataset": dataset,
                "source": str(scanned.source.resolve()), "classes": classes,
                "class_counts": counts, "num_records": len(good), "per_class": per_class,
                "skipped": len(skipped), "report": beton.name + REPORT_SUFFIX,
                "write": asdict(options), "file_size": partial_path.stat().st_size,
                "fingerprint": fingerprint(partial_path),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.replace(partial_path, beton)
        _write_report(beton, skipped)  # only now: a report never describes a .beton not written
        write_json_atomic(sidecar_path(beton), info)
    finally:
        partial_path.unlink(missing_ok=True)
    return WriteResult(beton, len(good), skipped, counts, time.perf_counter() - start,
                       scanned.estimated_bytes)


def _summary(result: WriteResult, classes: list[str]) -> str:
    size = result.beton.stat().st_size
    empty = [name for name, count in zip(classes, result.class_counts) if count == 0]
    lines = [f"{result.beton.stem}: {result.num_records} records, {len(classes)} classes -> "
             f"{result.beton} ({size / 1e6:.1f} MB) in {result.seconds:.1f} s"]
    if empty:
        lines.append(f"  warning: no image for {len(empty)} classes: {', '.join(empty[:10])}")
    if result.skipped:
        lines.append(f"  skipped {len(result.skipped)} files "
                     f"(all in {result.beton}{REPORT_SUFFIX}):")
        lines += [f"    {path}: {reason}" for path, reason in result.skipped[:SUMMARY_LINES]]
    return "\n".join(lines)


def run(args) -> int:
    """`write-beton` with its parsed arguments (`options.parser`); the exit status."""
    if args.adopt:
        if args.train or args.val or args.out:
            raise UserError("--adopt writes sidecars for existing betons: it takes no --train, "
                            "--val or --out")
        print("\n".join(adopt(args.adopt, args.classes)))
        return 0
    if not (args.train or args.val):
        raise UserError("nothing to write: pass --train and/or --val (or --adopt BETON)")
    if not args.out:
        raise UserError("--out is needed: the folder for train.beton and val.beton")
    if args.val_labels and not args.val:
        raise UserError("--val-labels needs --val (the flat validation folder)")
    out = Path(args.out).expanduser()
    options = WriteOptions(args.max_side, args.write_mode, args.compress_probability,
                           args.jpeg_quality, args.seed)
    workers = _check_workers(args.workers)
    _check_per_class(args.per_class)
    progress = not args.no_progress
    beton, created = None, _first_missing(out)
    try:
        # Plan every split before writing any, so a bad val argument fails in seconds, not hours.
        plans: dict[str, SplitPlan] = {}
        if args.train:
            plans["train"] = _plan(args.train, args.classes, None, None)
        if args.val:  # labelled with the train split's classes
            classes = plans["train"].classes if "train" in plans else args.classes
            plans["val"] = _plan(args.val, classes, args.val_labels, args.synsets)
        scanned = [_scan_planned(plan, out / f"{split}.beton", options, workers, args.strict,
                                 progress, split, args.per_class) for split, plan in plans.items()]
        print(_check_disk(scanned))  # before any write: hours of writing must not run out
        for split in scanned:
            beton = split.beton
            result = _write_scanned(split, options, workers, progress, args.per_class,
                                    args.dataset)
            print(_summary(result, split.classes))
    except StrictSkipError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except WriteFailed as err:
        print(f"error: writing {beton} failed: {err}; nothing written", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written under {beton or out}")
        return EXIT_INTERRUPTED
    finally:
        # A folder this run created and left without a file goes too: no trace of a failed write.
        if created is not None and created.is_dir() and not any(
                path.is_file() for path in created.rglob("*")):
            shutil.rmtree(created)
    return 0


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) makes)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing
