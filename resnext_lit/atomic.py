"""Files that readers never see half-written: write a temporary file beside the target, then
rename it over the target (`os.replace` is atomic on one file system).

    from resnext_lit.atomic import atomic_write, write_json_atomic
    write_json_atomic(Path("runs/demo/k3x9a0qz/results.json"), record)
    with atomic_write(Path("betons/train.beton.skipped.tsv")) as f:
        f.write(text)

The one writer of every file the project must not leave half-written: results.json, .beton
sidecars and skip reports, sweep state, tables and figures, benchmark records and checkpoints
(`resnext_lit.training.checkpoints.AtomicCheckpointIO`, with `fsync=True`). Light on purpose
(no torch, no Lightning): the tool commands import it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path, mode: str = "w", fsync: bool = False, newline: str | None = None):
    """A file object whose contents replace `path` only if the block ends without an exception.

    The temporary file is `.<name>.<pid>-<random>.tmp` in the target's folder (same file system;
    never shaped like `last*.ckpt`, which `--ckpt_path last` looks for), removed on any failure.
    It gets the umask's permissions (a sidecar beside a shared beton stays readable by the
    group), not mkstemp's 0600. `newline`: as `open`'s ("" for csv). `fsync`: flush the file
    and, after the rename, its folder, so the new file survives a power cut (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself is on disk only once the folder is
            os.fsync(folder)
        finally:
            os.close(folder)


TEMPORARY = re.compile(r"\..+\.\d+-[0-9a-f]{8}\.tmp")  # `atomic_write`'s temporary files


def remove_stale_temporaries(folder: Path) -> None:
    """Remove `atomic_write`'s temporaries under `folder` (a process killed mid-write leaves
    one). Only for a folder no other process writes in now (a run's, while holding it)."""
    for path in Path(folder).rglob(".*.tmp"):
        if TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict) -> None:
    """`data` as indented JSON at `path`, all or nothing (values JSON cannot hold become str)."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
