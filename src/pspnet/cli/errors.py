"""The command line's one error path: what counts as a user error and the one line it prints.

:func:`run_verb` calls a verb's handler and turns every user error into ``error: <one line>``
on stderr with a non-zero exit status: library errors (``ValueError`` and its subclasses, which
name the file or flag, the value and the fix), OS errors on files (``[Errno N]`` rewritten to
the path, the reason and a fix), errors raised inside DataLoader worker processes (torch wraps
them with the worker's traceback; the original message is kept), a missing optional package,
and a closed standard output (``pspnet list-models | head -1``: no message, exit status 141
like a program stopped by SIGPIPE). ``--debug`` re-raises instead, with the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable

__all__ = ["run_verb", "flush_stdout", "one_line", "is_user_error", "EXTRAS"]

#: Optional packages and the extra that installs them.
EXTRAS = {
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "cv2": "video",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "h11": "serve", "tensorboard": "tensorboard", "matplotlib": "report",
}  # fmt: skip

#: Exit status of a command whose standard output was closed by its reader (128 + SIGPIPE).
BROKEN_PIPE_STATUS = 141

#: What to do about an OS error, by errno (the rest get the system's reason only).
_OS_FIXES = {
    errno.EACCES: "choose a path you can write to, or change its permissions",
    errno.EPERM: "choose a path you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only; choose a path on another one",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "this is a folder; give a file name",
    errno.ENOSPC: "the disk is full; free space or choose a path on another disk",
    errno.EEXIST: "it exists already; choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def is_user_error(e: BaseException) -> bool:
    """Errors caused by input (flags, files, data, the machine's files) or by the run itself
    (a diverged training, a failed export check), as opposed to bugs in pspnet."""
    if type(e).__name__ in ("TrainingDiverged", "ExportCheckError"):
        return True  # their messages name the iteration / the sizes and what to do
    return isinstance(e, (ValueError, OSError))


def _worker_message(text: str, name: str) -> str | None:
    """The original message of an exception re-raised by torch from a DataLoader worker.

    torch re-raises ``Caught X in DataLoader worker process N.\\nOriginal Traceback ...`` with
    the worker's whole traceback as the message; its last ``X: message`` line is the message.
    """
    if "Original Traceback" not in text:
        return None
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", text, re.MULTILINE))
    if not found:
        return None
    worker = re.search(r"in DataLoader worker process (\d+)", text)
    where = f" (in data loader worker {worker.group(1)})" if worker else ""
    return text[found[-1].end():].strip() + where


def _os_message(e: OSError) -> str:
    """``<path>: <reason>; <fix>`` instead of ``[Errno N] reason: 'path'``."""
    reason = (e.strerror or str(e)).strip()
    reason = reason[:1].lower() + reason[1:]
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    fix = _OS_FIXES.get(e.errno or 0)
    if not paths:
        return str(e) if e.strerror is None else f"{reason}{'; ' + fix if fix else ''}"
    where = " -> ".join(paths)
    return f"{where}: {reason}" + (f"; {fix}" if fix else "")


def one_line(e: BaseException) -> str:
    """The message printed after ``error: `` for user error ``e``."""
    text = str(e)
    worker = _worker_message(text, type(e).__name__)
    if worker is not None:
        return worker
    if isinstance(e, OSError) and e.errno is not None and (
            e.strerror is not None or e.filename is not None):
        return _os_message(e)
    return text


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (captured in tests): nothing to do
        pass


def flush_stdout() -> bool:
    """Flush stdout now; a reader that went away (``| head``) is no error. Returns whether it
    had gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return True
    except ValueError:  # stdout was closed by the caller
        pass
    return False


def run_verb(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one verb's handler; user errors become one ``error:`` line and exit status 2."""
    debug = bool(getattr(args, "debug", False))
    try:
        status = func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside this handler, not at exit
        return status
    except KeyboardInterrupt as e:
        # A training stopped by SIGINT/SIGTERM says where its checkpoint is, and its exit code.
        print(str(e) or "interrupted", file=sys.stderr)
        return int(getattr(e, "exit_code", 130))
    except BrokenPipeError:
        # The reader of our output went away (`| head`): what it wanted, it has. Say nothing.
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    except ModuleNotFoundError as e:
        if debug or e.name not in EXTRAS:
            raise
        print(f"error: this needs the optional package {e.name!r}: pip install "
              f"'pspnet[{EXTRAS[e.name]}]'", file=sys.stderr)  # fmt: skip
        return 2
    except Exception as e:  # noqa: BLE001 - mapped to one line below
        if debug or not is_user_error(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
