"""The JSON sidecar the writer puts next to every .beton, the checks that a .beton is whole and
belongs to its sidecar (run by `FFCVDataModule.__init__`, before any heavy work), and what can be
read from a beton that has no sidecar (one written by ffcv-imagenet's `write_imagenet.py`).

    from resnext_lit.data.beton.sidecar import read_beton_info, read_unchecked_info
    info = read_beton_info("betons/train.beton")   # reads betons/train.beton.json
    info["classes"], info["num_records"], info["write"]["max_side"]
    read_unchecked_info("train_500_0.50_90.ffcv")  # the same keys, from the file's labels

The sidecar pins the file by size, record count and a fingerprint (SHA-256 of the size and the
first and last MiB): cheap enough to check at every start on a 300 GB ImageNet beton, and it
catches a truncated copy, a half-written file and a sidecar left over from another write.
It is not a full integrity hash. `python -m resnext_lit write-beton --adopt FILE` writes one for
a beton written elsewhere (`adopted_info`).

A beton without a sidecar still has FFCV's header and metadata table, which hold each record's
label (an IntField lives in the table, not in the data pages) and image size and mode: reading
them is what FFCV's `Reader` does (the table and the allocation table, a row each per record;
about 50 ms for 1.28 M records), no image is decoded. Its classes are then the labels 0..max,
named by their index unless names are given; the file is checked only for its layout: the
fields, and a size that matches its header (`alloc_table_ptr` + one allocation row per record,
as FFCV writes the allocation table last and each image is one allocation).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.reader import Reader
from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType, HeaderType

from ...atomic import write_json_atomic
from ...errors import UserError
from ..images import list_classes

SIDECAR_SUFFIX = ".json"  # train.beton -> train.beton.json
SIDECAR_FORMAT = "resnext_lit.beton/1"
FIELDS = {"image": RGBImageField, "label": IntField}  # record layout (ours and ffcv-imagenet's)
FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of the file
REQUIRED_KEYS = ("format", "classes", "class_counts", "num_records", "file_size", "fingerprint",
                 "write")


def sidecar_path(beton: str | os.PathLike) -> Path:
    return Path(str(beton) + SIDECAR_SUFFIX)


def fingerprint(path: str | os.PathLike) -> str:
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(FINGERPRINT_SPAN))
        fh.seek(max(0, size - FINGERPRINT_SPAN))
        digest.update(fh.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def _field_list(names, types) -> str:
    return ", ".join(f"{name}: {kind.__name__ if kind else 'custom'}"
                     for name, kind in zip(names, types))


def _read_layout(beton: Path) -> tuple[np.void, list[str]]:
    """(header, field names) of `beton` after checking its version and its fields; one-line
    ValueError if it is not a beton of image/label records."""
    header_bytes = HeaderType.itemsize
    if beton.stat().st_size < header_bytes:
        raise UserError(f"{beton} is not a .beton (shorter than FFCV's header)")
    header = np.fromfile(beton, dtype=HeaderType, count=1)[0]
    if header["version"] != CURRENT_VERSION:
        raise UserError(f"{beton} is not a .beton of FFCV format {CURRENT_VERSION} "
                        f"(header says version {header['version']})")
    count = int(header["num_fields"])
    descriptors = np.fromfile(beton, dtype=FieldDescType, count=count, offset=header_bytes)
    if len(descriptors) != count:
        raise UserError(f"{beton} is truncated inside its header")
    names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in descriptors]
    types = [TYPE_ID_HANDLER.get(int(d["type_id"])) for d in descriptors]
    if dict(zip(names, types)) != FIELDS or len(names) != len(FIELDS):
        raise UserError(f"{beton} has fields {_field_list(names, types)}; expected "
                        f"{_field_list(FIELDS, FIELDS.values())} (as ffcv-imagenet and "
                        "`python -m resnext_lit write-beton` write them)")
    return header, names


def read_header(beton: Path) -> tuple[int, list[str]]:
    """(record count, field names) from a .beton header; ValueError if it is not one."""
    header, names = _read_layout(beton)
    return int(header["num_samples"]), names


def read_records(beton: Path) -> dict[str, np.ndarray]:
    """FFCV's metadata table of `beton` by field: "label" (class indices), "image" (mode, width,
    height, data pointer per record). Reads the header and the table, no image data."""
    header, names = _read_layout(beton)
    size, records = beton.stat().st_size, int(header["num_samples"])
    expected = int(header["alloc_table_ptr"]) + records * ALLOC_TABLE_TYPE.itemsize
    if header["alloc_table_ptr"] == 0 or size != expected:
        raise UserError(f"{beton} is {size} bytes but its header implies {expected}: "
                        "truncated, or still being written or copied")
    metadata = Reader(str(beton)).metadata  # FFCV names the columns f0, f1, ... in field order
    return {name: metadata[f"f{i}"] for i, name in enumerate(names)}


def resolve_classes(classes) -> list[str]:
    """Class names from a list, a train ImageFolder (its sorted sub-folders), a sidecar (.json),
    or a text file whose lines each start with one name (ImageNet's LOC_synset_mapping.txt:
    "n01440764 tench, Tinca tinca", in the sorted order ffcv-imagenet's labels follow)."""
    if isinstance(classes, (list, tuple)):
        names = [str(name) for name in classes]
    else:
        path = Path(classes).expanduser()
        if path.is_dir():
            return list_classes(path)
        if not path.is_file():
            raise UserError(f"classes {path}: expected a train ImageFolder, a .beton.json "
                            "sidecar or a text file of class names")
        if path.suffix == SIDECAR_SUFFIX:
            try:
                names = list(json.loads(path.read_text())["classes"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path} is not a beton sidecar with a class list "
                                f"({err})") from None
        else:
            names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise UserError(f"classes {classes!r}: expected distinct class names, "
                        f"got {len(names)} names, {len(set(names))} distinct")
    return names


def _label_info(beton: Path, labels: np.ndarray, classes) -> dict:
    if len(labels) == 0:
        raise UserError(f"{beton} holds no records")
    low, high = int(labels.min()), int(labels.max())
    names = resolve_classes(classes) if classes is not None else [str(i) for i in range(high + 1)]
    if low < 0 or high >= len(names):
        raise UserError(f"{beton} has labels {low}..{high}, outside the {len(names)} classes "
                        "given (labels must be class indices 0..N-1)")
    return {"classes": names, "class_counts": np.bincount(labels, minlength=len(names)).tolist(),
            "num_records": len(labels)}


def read_unchecked_info(beton: str | os.PathLike, classes=None) -> dict:
    """What a beton without a sidecar tells about itself: the sidecar's keys that FFCVDataModule
    reads (classes, class_counts, num_records), with "checked": False. `classes` names the
    labels (see `resolve_classes`); default: their indices "0".."max label"."""
    beton = Path(beton).expanduser()
    if not beton.is_file():
        raise UserError(f"{beton} does not exist")
    return {**_label_info(beton, read_records(beton)["label"], classes), "checked": False}


def adopted_info(beton: str | os.PathLike, classes=None) -> dict:
    """A sidecar for a beton written elsewhere (`write-beton --adopt`): classes and counts as
    `read_unchecked_info`, and the "write" options as far as the records show them (FFCV stores
    no write options: max_side is the largest side present, compress_probability the share of
    JPEG records; jpeg_quality and seed are unknown)."""
    beton = Path(beton).expanduser()
    if not beton.is_file():
        raise UserError(f"{beton} does not exist")
    records = read_records(beton)
    images = records["image"]
    jpeg = float(np.mean(images["mode"] == IMAGE_MODES["jpg"]))
    mode = "jpg" if jpeg == 1 else "raw" if jpeg == 0 else "proportion"
    write = {"max_side": int(max(images["width"].max(), images["height"].max())),
             "write_mode": mode, "compress_probability": round(jpeg, 4), "jpeg_quality": None,
             "seed": None, "inferred_from_records": True}
    return {"format": SIDECAR_FORMAT, "split": beton.stem, "source": None,
            "adopted": str(beton.resolve()), **_label_info(beton, records["label"], classes),
            "skipped": None, "report": None, "write": write,
            "file_size": beton.stat().st_size, "fingerprint": fingerprint(beton),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_beton_info(beton: str | os.PathLike) -> dict:
    """The sidecar of `beton`, after checking that both exist and agree. One-line ValueErrors."""
    beton = Path(beton).expanduser()
    side = sidecar_path(beton)
    if not beton.is_file():
        raise UserError(f"{beton} does not exist (write it with "
                        "`python -m resnext_lit write-beton`)")
    if not side.is_file():
        raise UserError(f"{beton} has no sidecar {side.name}; write one with "
                        f"`python -m resnext_lit write-beton --adopt {beton}`")
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"sidecar {side} is not valid JSON ({err})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(info, dict) or key not in info]
    if missing or info["format"] != SIDECAR_FORMAT:
        raise UserError(f"sidecar {side} is not a {SIDECAR_FORMAT} sidecar "
                        f"(missing {', '.join(missing) or 'nothing'}, "
                        f"format {info.get('format')!r})")
    size = beton.stat().st_size
    if size != info["file_size"]:
        raise UserError(f"{beton} is {size} bytes but its sidecar says {info['file_size']}: "
                        "truncated, still being copied, or from another write")
    records, _ = read_header(beton)
    if records != info["num_records"]:
        raise UserError(f"{beton} holds {records} records but its sidecar says "
                        f"{info['num_records']}: the sidecar is from another write")
    if fingerprint(beton) != info["fingerprint"]:
        raise UserError(f"{beton} does not match the fingerprint in {side.name}: "
                        "the file changed or the sidecar is from another write")
    if len(info["class_counts"]) != len(info["classes"]) or not info["classes"]:
        raise UserError(f"sidecar {side}: {len(info['classes'])} classes but "
                        f"{len(info['class_counts'])} class counts")
    return {**info, "checked": True}


def adopt(betons, classes=None) -> list[str]:
    """Write our sidecar next to each beton written elsewhere (`write-beton --adopt`), so the
    usual checks apply from then on; one line per beton. A beton that already has a sidecar is
    checked against it and left as is. Every beton is read before any sidecar is written."""
    todo, lines = [], []
    for beton in (Path(b).expanduser() for b in betons):
        side = sidecar_path(beton)
        if not side.is_file():
            info = adopted_info(beton, classes)
            if not os.access(side.parent, os.W_OK):
                raise UserError(f"cannot write the sidecar {side} (the folder is not writable)")
            todo.append((beton, side, info))
            continue
        try:
            info = read_beton_info(beton)
        except ValueError as err:
            raise UserError(f"{err} (remove {side} to adopt {beton.name} anew)") from None
        if classes is not None and resolve_classes(classes) != info["classes"]:
            raise UserError(f"{side} names other classes than --classes; remove it to adopt "
                            f"{beton.name} anew")
        lines.append(f"{beton}: already has a sidecar ({side.name}) that matches it; left as is")
    for beton, side, info in todo:
        write_json_atomic(side, info)
        lines.append(f"adopted {beton}: {info['num_records']} records, "
                     f"{len(info['classes'])} classes -> {side.name}")
    return lines
