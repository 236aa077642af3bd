"""``python -m NerveSegLogic.train ARGS``: ``nerveseg train ARGS``, the entry point torchrun starts.

    torchrun --nproc-per-node 4 -m NerveSegLogic.train --model unet --data DATA --out runs/unet

Started by torchrun (its RANK, WORLD_SIZE, MASTER_ADDR... in the environment) it is ``nerveseg train --distributed``
(:mod:`.distributed`); started alone, a single-process ``nerveseg train``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..commands import train as command
from .distributed import launched_by_torchrun


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m NerveSegLogic.train", description=command.DESCRIPTION, epilog=command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    if launched_by_torchrun():
        args.distributed = True
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
