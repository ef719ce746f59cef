"""Command line entry point: `python -m resnext_lit <command> ...`.

    python -m resnext_lit models            # the zoo with params, MACs and the paper's errors
"""

from __future__ import annotations

import importlib
import sys

# Each tool command lives in its own module with a `main(argv) -> int`.
COMMANDS = {
    "models": "resnext_lit.models.table",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m resnext_lit {" + ",".join(COMMANDS) + "} ...")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    except ValueError as err:  # user errors are one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
