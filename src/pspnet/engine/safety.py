"""What keeps a training run from destroying what the user has.

* :func:`lock_work_dir`: one run at a time in a work directory (``WORK_DIR/train.lock`` holds
  the PID; a stale lock of a dead process is taken over with a warning);
* :func:`check_work_dir`: a finished run is not overwritten unless ``--overwrite`` (or a
  resume) says so; :func:`clear_run_outputs` removes the run's own outputs for ``--overwrite``;
* :class:`StopSignals`: SIGINT and SIGTERM stop the loop after the current step, which then
  saves a checkpoint (:class:`TrainingInterrupted` says where and how to resume);
* :func:`first_non_finite`: the first non-finite tensor of a state dict (weights are checked
  before they are saved).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from torch import Tensor

from pspnet.config import ConfigError
from pspnet.engine.distributed import DistInfo, broadcast_object, is_distributed

__all__ = ["LOCK_FILE", "RUN_OUTPUTS", "IgnoreStopSignals", "StopSignals", "TrainingInterrupted",
           "WorkDirLock", "check_work_dir", "clear_run_outputs", "first_non_finite",
           "lock_work_dir", "on_main"]

T = TypeVar("T")

#: The lock file of a work directory in use.
LOCK_FILE = "train.lock"
#: What a training run writes in its work directory (and ``--overwrite`` removes; nothing else).
RUN_OUTPUTS = ("checkpoints", "final", "best", "tb", "log.jsonl", "config.yaml", "skipped.json",
               "split.json")


def on_main(info: DistInfo, check: Callable[[], T]) -> T | None:
    """Run ``check`` on rank 0 only; a :class:`ConfigError` it raises is raised on every rank
    (the others would otherwise wait for rank 0 until the job's timeout). Returns its result
    on rank 0, None elsewhere."""
    if not is_distributed():
        return check() if info.is_main else None
    result: T | None = None
    error: str | None = None
    if info.is_main:
        try:
            result = check()
        except ConfigError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    return result


# --------------------------------------------------------------------------------------------
# The lock


class WorkDirLock:
    """A held ``train.lock``; :meth:`release` removes it (and a work dir it made, if empty)."""

    def __init__(self, work_dir: Path, created_dir: bool) -> None:
        self.path = work_dir / LOCK_FILE
        self.created_dir = created_dir

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if _read_lock(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        if self.created_dir:
            try:
                self.path.parent.rmdir()  # nothing was written: leave no empty folder behind
            except OSError:
                pass


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True
    return True


def lock_work_dir(work_dir: Path) -> WorkDirLock:
    """Lock ``work_dir`` for this process (creating the folder if needed).

    The lock is created atomically (a complete file hard-linked into place, which fails if one
    exists), so two runs starting together cannot both hold it.

    Raises:
        ConfigError: Another live process holds the lock (the message names its PID).
    """
    created = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": _host(),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".train.lock.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        for _ in range(5):  # a few rounds: another process may take over a stale lock meanwhile
            try:
                os.link(tmp, path)
                return WorkDirLock(work_dir, created)
            except FileExistsError:
                _take_over_if_stale(path)
        raise ConfigError(f"cannot lock {work_dir}: {path} keeps changing; another run is "
                          "starting there. Train into another --work-dir.")  # fmt: skip
    finally:
        Path(tmp).unlink(missing_ok=True)


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")


def _take_over_if_stale(path: Path) -> None:
    """Remove ``path`` if it is the lock of a dead process here; raise if it is in use."""
    doc = _read_lock(path)
    pid, host = doc.get("pid"), doc.get("host")
    work_dir = path.parent
    if not isinstance(pid, int):
        if not path.exists():
            return  # removed meanwhile: try again
        raise ConfigError(
            f"{work_dir} is locked by {path}, which names no process; if no training uses "
            f"{work_dir}, delete {path}, or train into another --work-dir"
        )
    if host != _host():
        raise ConfigError(
            f"{work_dir} is in use by training process {pid} on host {host!r} (lock file "
            f"{path}); if that process is gone, delete the lock file, or train into another "
            "--work-dir"
        )
    if _alive(pid):
        raise ConfigError(
            f"{work_dir} is in use by training process {pid} (since {doc.get('started', '?')}; "
            f"lock file {path}): wait for it to finish or stop it, or train into another "
            "--work-dir"
        )
    # Move the stale lock aside and check that it is the one read (not a fresh one a faster
    # process made meanwhile); a fresh one goes back in place.
    aside = path.with_name(f".{LOCK_FILE}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read_lock(aside) != doc:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    warnings.warn(
        f"taking over the lock of {work_dir}: training process {pid} that held it is no longer "
        "running (it stopped without removing its lock)",
        stacklevel=4,
    )


# --------------------------------------------------------------------------------------------
# Finished runs


def holds_run(work_dir: Path) -> list[str]:
    """What of a previous run ``work_dir`` holds: ``final``, ``best``, ``checkpoints``."""
    found = [name for name in ("final", "best") if (work_dir / name).is_dir()
             and any((work_dir / name).iterdir())]  # fmt: skip
    ckpts = work_dir / "checkpoints"
    if ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir()):
        found.append("checkpoints")
    return found


def check_work_dir(work_dir: Path, *, resume: str | None, overwrite: bool,
                   resumed: Path | None) -> None:
    """Refuse to start a new run over a previous one unless asked.

    Args:
        work_dir: The run's work directory.
        resume: ``train.resume`` as configured.
        overwrite: ``train.overwrite`` (``--overwrite``).
        resumed: The checkpoint this run continues, or None (a new run).

    Raises:
        ConfigError: Both ``--overwrite`` and ``--resume``; or a new run (or a resume from a
            checkpoint elsewhere) into a work directory that holds a run, without
            ``--overwrite``.
    """
    if overwrite and resume:
        raise ConfigError(
            f"--overwrite starts {work_dir} again, --resume {resume} continues a run: give one "
            "of them (train.overwrite and train.resume)"
        )
    if overwrite:
        return
    if resumed is not None and _inside(resumed, work_dir / "checkpoints"):
        return  # continuing the run that is there
    previous = holds_run(work_dir)
    if not previous:
        return
    what = ", ".join(f"{name}/" for name in previous)
    start = ("a run resumed from " + str(resumed)) if resumed is not None else "a new run"
    cont = ("--resume auto to continue it, " if "checkpoints" in previous
            else "")  # fmt: skip
    raise ConfigError(
        f"{work_dir} already holds a training run ({what}); {start} would overwrite it. Use "
        f"{cont}--overwrite to start again there (its checkpoints, final/ and best/ are "
        "deleted), or another --work-dir"
    )


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().parent == folder.resolve()
    except OSError:
        return False


def clear_run_outputs(work_dir: Path) -> None:
    """Delete what a previous run wrote in ``work_dir`` (:data:`RUN_OUTPUTS`), nothing else."""
    for name in RUN_OUTPUTS:
        p = work_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# --------------------------------------------------------------------------------------------
# Signals


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; a checkpoint of the last step was saved first.

    A ``KeyboardInterrupt``, so ``except Exception`` does not swallow it.

    Attributes:
        iteration: The step the checkpoint holds.
        checkpoint: The checkpoint file.
        exit_code: ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, iteration: int, checkpoint: Path | None,
                 signum: int) -> None:  # fmt: skip
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM ask the loop to stop after the current step.

    A second signal stops at once (``KeyboardInterrupt``), without a checkpoint. Forked
    DataLoader workers inherit the handler and ignore the signal: the main process stops them.
    Outside the main thread (where Python cannot handle signals) this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker: keep serving batches until the main process ends
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint "
              "(send it again to stop at once, without saving)", file=sys.stderr, flush=True)


class IgnoreStopSignals:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGINT and SIGTERM (then runs
    ``inner``), so a Ctrl+C or a SIGTERM sent to the whole process group stops the main process
    cleanly after its step instead of killing the worker it is waiting on (torch's workers die
    of SIGTERM). The training loop stops its workers itself when it ends, however it ends
    (:func:`pspnet.data.training.stop_workers`): at interpreter exit multiprocessing asks them
    to stop with SIGTERM, which they ignore, and would then wait for them forever."""

    def __init__(self, inner: Callable[[int], None] | None = None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


# --------------------------------------------------------------------------------------------
# Finite numbers


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            return name
    return None

