"""The JSON sidecar the writer puts next to every .beton, and the checks that a .beton is whole
and belongs to its sidecar (run by `FFCVDataModule.__init__`, before any heavy work).

    from resnext_lit.data.sidecar import read_beton_info
    info = read_beton_info("betons/train.beton")   # reads betons/train.beton.json
    info["classes"], info["num_records"], info["write"]["max_side"]

The sidecar pins the file by size, record count and a fingerprint (SHA-256 of the size and the
first and last MiB): cheap enough to check at every start on a 300 GB ImageNet beton, and it
catches a truncated copy, a half-written file and a sidecar left over from another write.
It is not a full integrity hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from ffcv.types import CURRENT_VERSION, FieldDescType, HeaderType, TYPE_ID_HANDLER
from ffcv.fields import IntField, RGBImageField

SIDECAR_SUFFIX = ".json"  # train.beton -> train.beton.json
SIDECAR_FORMAT = "resnext_lit.beton/1"
FIELDS = {"image": RGBImageField, "label": IntField}  # record layout, in write order
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


def read_header(beton: Path) -> tuple[int, list[str]]:
    """(record count, field names) from a .beton header; ValueError if it is not one."""
    header_bytes = HeaderType.itemsize
    if beton.stat().st_size < header_bytes:
        raise ValueError(f"{beton} is not a .beton (shorter than FFCV's header)")
    header = np.fromfile(beton, dtype=HeaderType, count=1)[0]
    if header["version"] != CURRENT_VERSION:
        raise ValueError(f"{beton} is not a .beton of FFCV format {CURRENT_VERSION} "
                         f"(header says version {header['version']})")
    count = int(header["num_fields"])
    descriptors = np.fromfile(beton, dtype=FieldDescType, count=count, offset=header_bytes)
    if len(descriptors) != count:
        raise ValueError(f"{beton} is truncated inside its header")
    names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in descriptors]
    types = [TYPE_ID_HANDLER.get(int(d["type_id"])) for d in descriptors]
    if dict(zip(names, types)) != FIELDS:
        raise ValueError(f"{beton} has fields {names}, expected {list(FIELDS)} "
                         "(write it with `python -m resnext_lit write-beton`)")
    return int(header["num_samples"]), names


def read_beton_info(beton: str | os.PathLike) -> dict:
    """The sidecar of `beton`, after checking that both exist and agree. One-line ValueErrors."""
    beton = Path(beton).expanduser()
    side = sidecar_path(beton)
    if not beton.is_file():
        raise ValueError(f"{beton} does not exist (write it with "
                         "`python -m resnext_lit write-beton`)")
    if not side.is_file():
        raise ValueError(f"{beton} has no sidecar {side.name}; rewrite it with "
                         "`python -m resnext_lit write-beton`")
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"sidecar {side} is not valid JSON ({err})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(info, dict) or key not in info]
    if missing or info["format"] != SIDECAR_FORMAT:
        raise ValueError(f"sidecar {side} is not a {SIDECAR_FORMAT} sidecar "
                         f"(missing {', '.join(missing) or 'nothing'}, "
                         f"format {info.get('format')!r})")
    size = beton.stat().st_size
    if size != info["file_size"]:
        raise ValueError(f"{beton} is {size} bytes but its sidecar says {info['file_size']}: "
                         "truncated, still being copied, or from another write")
    records, _ = read_header(beton)
    if records != info["num_records"]:
        raise ValueError(f"{beton} holds {records} records but its sidecar says "
                         f"{info['num_records']}: the sidecar is from another write")
    if fingerprint(beton) != info["fingerprint"]:
        raise ValueError(f"{beton} does not match the fingerprint in {side.name}: "
                         "the file changed or the sidecar is from another write")
    if len(info["class_counts"]) != len(info["classes"]) or not info["classes"]:
        raise ValueError(f"sidecar {side}: {len(info['classes'])} classes but "
                         f"{len(info['class_counts'])} class counts")
    return info
