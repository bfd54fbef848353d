"""The ``pspnet`` command: one verb per job, thin handlers, lazy imports.

Every handler turns its flags into library calls. User errors (bad flags, bad files, bad data,
OS errors on paths, errors in loader workers) become one ``error: ...`` line on stderr and exit
code 2 (:mod:`pspnet.cli.errors`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from pspnet.cli.common import _read_names
from pspnet.cli.errors import BROKEN_PIPE_STATUS, flush_stdout, run_verb
from pspnet.cli.parser import build_parser

__all__ = ["build_parser", "main", "_read_names"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pspnet`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: argparse has printed it
        if flush_stdout():  # `pspnet --help | head -1`
            return BROKEN_PIPE_STATUS
        raise
    except BrokenPipeError:
        flush_stdout()
        return BROKEN_PIPE_STATUS
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return BROKEN_PIPE_STATUS if flush_stdout() else 2
    # Progress and results of long verbs (training's validations, resumes, skipped files) go
    # through logging; without a handler they would vanish. -q keeps warnings only.
    if not logging.getLogger().handlers:
        quiet = bool(getattr(args, "quiet", False))
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    return run_verb(func, args)
