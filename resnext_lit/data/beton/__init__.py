"""Writing `.beton` files: `python -m resnext_lit write-beton ...` (see `write.py`).

- `write.py`: the command and `write_beton`: plan, scan, size check, write, sidecar, report.
- `processes.py`: the writer's worker processes (scan, encode, FFCV's page writer).
- `sidecar.py`: the JSON beside each beton (classes, records, fingerprint) and adopting a
  beton written elsewhere (`--adopt`).
"""

from .write import main, write_beton

__all__ = ["main", "write_beton"]
