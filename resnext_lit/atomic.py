"""Files that readers never see half-written: write a temporary file beside the target, then
rename it over the target (`os.replace` is atomic on one file system).

    from resnext_lit.atomic import write_json_atomic
    write_json_atomic(Path("runs/demo/version_0/results.json"), record)

Used for results.json, .beton sidecars, sweep state and benchmark records. Light on purpose
(no torch, no Lightning): the tool commands import it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    """`data` as indented JSON at `path`, all or nothing (values JSON cannot hold become str).
    The file gets the umask's permissions (a sidecar beside a shared beton stays readable by
    the group), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
