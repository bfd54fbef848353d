"""Shared test set-up: make the helpers in tests/ importable, and make sure the suite ends.

A CI run once printed its summary and then never ended: something the tests started outlived
them (a child process holding the output pipe, or a non-daemon thread the interpreter joins at
exit). Two guards keep that from happening again: every test must leave no child process
behind (the test that does fails, naming the command), and at the end of the session anything
still alive is named, killed, and the run fails, with a watchdog that dumps the stacks and exits
if interpreter shutdown still hangs.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

_EXIT_WATCHDOG_S = 120


def _leftover_children(grace_s: float) -> dict[int, str]:
    """Children still alive after ``grace_s``; garbage (a DataLoader iterator that nothing
    references any more, which stops its workers when collected) is collected first."""
    from procs import own_children

    kids = own_children()
    if kids:
        gc.collect()
    end = time.monotonic() + grace_s
    while kids and time.monotonic() < end:
        time.sleep(0.1)
        kids = own_children()
    return kids


_REPORTED: set[int] = set()  # leftovers already blamed on a test: not blamed again


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> None:
    yield
    kids = {p: c for p, c in _leftover_children(grace_s=10.0).items() if p not in _REPORTED}
    if kids:
        # Not killed here: a DataLoader's SIGCHLD handler would raise the death of its worker
        # in whichever test runs next. The end of the session kills them.
        _REPORTED.update(kids)
        pytest.fail("the test left child processes running: "
                    + "; ".join(f"{p}: {c}" for p, c in kids.items()), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (-n N) the workers share the cores: torch's intra-op threads are
    # divided between them rather than each worker using every core.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and hasattr(config, "workerinput"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config,
                                                                         "workerinput"):
        return  # the xdist controller: its children are the workers, each checks itself
    problems = []
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a killed loader worker is no error now
    for pid, cmd in _leftover_children(grace_s=0.0).items():
        problems.append(f"child process {pid} still running: {cmd}")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon or not thread.is_alive():
            continue
        thread.join(timeout=5.0)  # an executor finishing its last task is fine
        frame = sys._current_frames().get(thread.ident)
        if frame is not None and frame.f_code.co_name == "_worker" and frame.f_code.co_filename \
                .endswith(os.path.join("concurrent", "futures", "thread.py")):
            continue  # an idle executor worker (torch's compile pool): woken at exit
        if thread.is_alive():
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "?"
            problems.append(f"non-daemon thread {thread.name!r} still running at {where}")
    if problems:
        sys.stderr.write("\nThe tests left work running, which would keep this run from "
                         "ending:\n  " + "\n  ".join(problems) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # If interpreter shutdown still hangs (an atexit join, a stuck thread), dump every stack
    # and exit rather than hold CI until its deadline.
    faulthandler.dump_traceback_later(_EXIT_WATCHDOG_S, exit=True)
