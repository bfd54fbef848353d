"""Memory readings of the running process from /proc (Linux), for the memory-bound children."""

from __future__ import annotations


def status(key: str) -> int:
    """A ``/proc/self/status`` memory field (e.g. ``VmPeak``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> bool:
    """Reset the resident-set high-water mark (``VmHWM``); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
