"""The processes a test started: to check that none outlives it."""

from __future__ import annotations

import os
from pathlib import Path

# Children allowed to outlive a test: torch's compile workers live for the whole session.
SESSION_CHILDREN = ("torch._inductor.compile_worker", "torch/_inductor/compile_worker")


def children_of(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` (zombies excluded): pid -> command line."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the fields after the ")" that closes the command name: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents[int(entry)] = int(ppid)
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    cmd = b"?"
                found[child] = cmd.decode(errors="replace").strip()
                frontier.append(child)
    return found


def own_children() -> dict[int, str]:
    """This process's live descendants, less the session-long compile workers."""
    return {p: c for p, c in children_of(os.getpid()).items()
            if not any(s in c for s in SESSION_CHILDREN)}
