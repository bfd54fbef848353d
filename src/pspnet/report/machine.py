"""What a number was measured on: the machine, the load, the commit of a checkout."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "usable_cpus", "machine_info", "format_machine", "loadavg", "git_commit",
           "display_path"]


def cpu_model(default: str = "") -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else ``default``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, torch version and threads of this machine."""
    import torch

    from pspnet.precision import cpu_has_native_bf16

    return {
        "cpu": cpu_model(platform.processor() or platform.machine()),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "python": platform.python_version(),
    }


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (how busy the machine was), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_machine(m: dict[str, Any]) -> str:
    """One line describing a :func:`machine_info` record (missing fields print ``?``)."""
    bf16 = {True: "native bf16", False: "no native bf16 (fp32)", None: "bf16 unknown"}
    return (
        f"{m.get('cpu', '?')}, {m.get('usable_cpus', '?')} usable of "
        f"{m.get('logical_cpus', '?')} logical CPUs, {bf16.get(m.get('native_bf16'))}; "
        f"torch {m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), "
        f"Python {m.get('python', '?')}"
    )


def git_commit(checkout: str | Path) -> str:
    """``git rev-parse --short HEAD`` of ``checkout``, plus a note when files are modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True,
            check=True, timeout=20,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout,
            capture_output=True, text=True, check=True, timeout=20,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} (with uncommitted changes)" if dirty else sha


def display_path(path: str | Path, base: str | Path) -> str:
    """``path`` relative to ``base`` when it is inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)
