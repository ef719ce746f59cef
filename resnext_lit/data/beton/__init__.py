"""Writing `.beton` files: `python -m resnext_lit write-beton ...` (see `write.py`).

- `options.py`: the command's parser and `WriteOptions` (light: `--help` answers at once).
- `write.py`: the command and `write_beton`: plan, scan, size check, write, sidecar, report.
- `processes.py`: the writer's worker processes (scan, encode, FFCV's page writer).
- `sidecar.py`: the JSON beside each beton (classes, records, fingerprint) and adopting a
  beton written elsewhere (`--adopt`).
"""

from .options import parser

__all__ = ["main", "write_beton"]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # FFCV and OpenCV load only for a write
    from .write import run

    return run(args)


def __getattr__(name: str):
    if name == "write_beton":  # FFCV and OpenCV load on first use
        from .write import write_beton

        return write_beton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
