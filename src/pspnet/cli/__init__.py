"""The ``pspnet`` command: one verb per job, thin handlers, lazy imports.

Every handler turns its flags into library calls. User errors (bad flags, bad files, bad data)
become one ``error: ...`` line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pspnet.cli.common import _read_names
from pspnet.cli.parser import build_parser

__all__ = ["build_parser", "main", "_read_names"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pspnet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Progress and results of long verbs (training's validations, resumes, skipped files) go
    # through logging; without a handler they would vanish. -q keeps warnings only.
    if not logging.getLogger().handlers:
        quiet = bool(getattr(args, "quiet", False))
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if args.debug or e.name not in _EXTRAS:
            raise
        print(f"error: this needs the optional package {e.name!r}: pip install "
              f"'pspnet[{_EXTRAS[e.name]}]'", file=sys.stderr)  # fmt: skip
        return 2
    except Exception as e:  # noqa: BLE001 - mapped to one line below
        if args.debug or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


#: Optional packages and the extra that installs them.
_EXTRAS = {
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "cv2": "video",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "tensorboard": "tensorboard",
}  # fmt: skip


def _is_user_error(e: BaseException) -> bool:
    """Errors caused by input (flags, files, data) or by the run itself (a diverged training,
    a failed export check), as opposed to bugs in pspnet."""
    if type(e).__name__ in ("TrainingDiverged", "ExportCheckError"):
        return True  # their messages name the iteration / the sizes and what to do
    return isinstance(e, (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                          IsADirectoryError, NotADirectoryError))
