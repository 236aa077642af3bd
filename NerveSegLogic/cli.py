"""The ``nerveseg`` command: one subcommand per file in ``NerveSegLogic/commands/``.

Each command module has ``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs
it. Registering imports nothing heavy (no torch, no slicer), so ``nerveseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .models.weights import WeightsError

# Order as shown in --help.
COMMANDS = ["demo", "serve", "replay", "predict", "models", "train", "evaluate", "calibrate", "annotate", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerveseg",
        description="NerveSeg: live ultrasound nerve-block segmentation (OpenIGTLink in, Slicer segmentation out), "
                    "model zoo, training, annotation and data set export. Research use, not for clinical decisions.",
        epilog="Run 'nerveseg COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"NerveSegLogic.commands.{name}").register(subparsers)
    return parser


def _user_errors() -> tuple:
    """The exceptions that mean bad input rather than a bug: each carries a message naming what was wrong."""
    import sqlite3

    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from .store.database import StoreError
    # sqlite3.Error: an annotation store on a full or read-only disk, locked or damaged.
    return (ValueError, KeyError, OSError, WeightsError, StoreError, sqlite3.Error)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    user_errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors as error:
        # Bad input (an unknown model, a missing or corrupt weights file, a device this machine lacks, a malformed
        # data set): one clear line instead of a traceback; -v shows where it came from.
        if args.verbose:
            logging.exception("%s failed", args.command)
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
