"""Two-process CPU torchrun: a rank that dies (or freezes) ends the job instead of hanging, the
last good checkpoint survives, and only rank 0 writes.

The failure is injected from the outside, into the real worker process: the test starts
``torchrun --nproc-per-node 2 -m pspnet train`` on a tiny data set, waits until rank 0's
``log.jsonl`` shows a checkpoint and later iterations, finds the rank-1 worker (a child of
torchrun whose environment has ``RANK=1``, read from ``/proc``) and sends it a signal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _engine_tiny import tiny_config
from pspnet.engine.distributed import convert_sync_batchnorm
from pspnet.checkpoint.training import find_checkpoint, load_checkpoint
from pspnet.models.registry import build_model

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.timeout(300),
]

DIST_TIMEOUT = 15.0  # train.dist_timeout: how long a rank waits for a missing one
STEPS_PER_EPOCH = 2  # 8 images, batch 4 (2 per rank): an epoch-end checkpoint every 2 steps


# -- /proc helpers --------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in clock ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == pid:
                out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int, start: int) -> bool:
    """The process that had this pid and start time still exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):  # the line being written right now
            records.append(json.loads(line))
    return records


# -- the job --------------------------------------------------------------------------------


class _Job:
    """A 2-process torchrun training job started in its own session; remembers every process
    it spawned so the test can check (and, on failure, guarantee) that none is left."""

    def __init__(self, data: dict[str, Path], tmp_path: Path) -> None:
        self.work = tmp_path / "run"
        self.cwd = tmp_path / "cwd"  # the job's working directory: must stay empty
        self.cwd.mkdir()
        self.cfg = tiny_config(
            data, self.work, max_iter=100_000, batch_size=4, log_interval=1,
            checkpoint_interval=0, val_interval=0, dist_timeout=DIST_TIMEOUT,
        )  # fmt: skip
        cfg_file = tmp_path / "cfg.yaml"
        cfg_file.write_text(self.cfg.to_yaml())
        self.out_path = tmp_path / "torchrun.out"
        self._out = open(self.out_path, "w")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node", "2", "-m", "pspnet", "train", "--config", str(cfg_file),
             "-q"],
            stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
            start_new_session=True,
        )  # fmt: skip
        self.spawned: dict[int, int] = {}  # pid -> start time

    def output(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        return _read_log(self.work / "log.jsonl")

    def remember_processes(self) -> None:
        for pid in _descendants(self.proc.pid):
            st = _stat(pid)
            if st is not None:
                self.spawned.setdefault(pid, st[2])

    def wait_for_training(self, deadline_s: float = 180.0) -> int:
        """Block until a checkpoint was written and training went on past it; returns the
        iteration of that checkpoint."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"the job ended before the failure was injected:\n{self.output()}")
            self.remember_processes()
            recs = self.records()
            ckpts = [r["iter"] for r in recs if r["event"] == "checkpoint"]
            if ckpts and any(r["event"] == "train" and r["iter"] > ckpts[0] for r in recs):
                return int(ckpts[0])
            time.sleep(0.2)
        pytest.fail(f"no checkpoint and progress within {deadline_s} s:\n{self.output()}")

    def worker(self, rank: int) -> int:
        """The pid of the torchrun worker with this RANK."""
        for pid in _children(self.proc.pid):
            if _environ(pid).get("RANK") == str(rank):
                return pid
        pytest.fail(f"no worker with RANK={rank} among torchrun's children")

    def leftovers(self, grace_s: float = 5.0) -> list[int]:
        """Spawned processes still running after a short grace period."""
        end = time.monotonic() + grace_s
        while True:
            alive = [p for p, start in self.spawned.items() if _running(p, start)]
            if not alive or time.monotonic() > end:
                return alive
            time.sleep(0.1)

    def close(self) -> None:
        """Kill whatever this job left behind (only processes it spawned), then the launcher."""
        for pid, start in self.spawned.items():
            if _running(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()


def _check_outputs(job: _Job, first_ckpt: int) -> None:
    """The work dir after a failed job: rank 0's files only, and a loadable last checkpoint."""
    work = job.work
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    allowed = {"config.yaml", "log.jsonl", "checkpoints/last.pt", "checkpoints/prev.pt",
               "checkpoints/latest"}  # fmt: skip
    # A checkpoint write that rank 0 was in when it was torn down leaves its temp file.
    tmp = re.compile(r"checkpoints/\.last\.[^/]+\.tmp")
    unexpected = [f for f in files if f not in allowed and not tmp.fullmatch(f)]
    assert not unexpected, f"files other than rank 0's outputs: {unexpected} (all: {files})"
    assert not any("rank" in f.lower() for f in files), files
    assert sorted(os.listdir(job.cwd)) == [], "the job wrote into its working directory"
    assert "checkpoints/last.pt" in files and "log.jsonl" in files

    records = _read_log(work / "log.jsonl")
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2, starts
    iters = [r["iter"] for r in records if r["event"] == "train"]
    # One writer: every iteration logged exactly once, in order (log_interval 1).
    assert iters == list(range(1, len(iters) + 1)), iters
    assert not [r for r in records if r["event"] == "end"]

    path, state = find_checkpoint(work)  # type: ignore[misc]
    assert path == work / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    logged = [r["iter"] for r in records if r["event"] == "checkpoint"]
    assert state["iteration"] >= max(logged) >= first_ckpt
    assert state["iteration"] % STEPS_PER_EPOCH == 0  # a complete epoch-end checkpoint
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    net = build_model(job.cfg.model)
    net.load_state_dict(state["model"])  # strict: every weight is there
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _assert_ended_cleanly(job: _Job, out: str, first_ckpt: int) -> None:
    """The job did not finish, left no process behind, and rank 0's files are intact."""
    assert "trained " not in out, out
    assert job.leftovers() == [], f"processes left running:\n{out}"
    _check_outputs(job, first_ckpt)


@pytest.mark.slow
def test_killed_rank_ends_the_job(tiny_data: dict, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed mid-training: the job exits non-zero within seconds (torchrun sees
    the dead worker and tears down rank 0; gloo's closed connection would also fail it), not
    after ``dist_timeout``; no process survives; rank 0's last checkpoint still loads."""
    job = _Job(tiny_data, tmp_path)
    try:
        first_ckpt = job.wait_for_training()
        victim = job.worker(1)
        job.remember_processes()
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        try:
            rc = job.proc.wait(timeout=DIST_TIMEOUT + 40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job hung after rank 1 died:\n{job.output()}")
        took = time.monotonic() - t_kill
        out = job.output()
        assert rc != 0, out
        assert took < DIST_TIMEOUT, f"the job took {took:.1f} s to end after rank 1 died\n{out}"
        assert "SIGKILL" in out, out  # torchrun reports the injected failure
        _assert_ended_cleanly(job, out, first_ckpt)
        print(f"rank 1 killed after checkpoint {first_ckpt}; job exited {rc} {took:.1f} s later")
    finally:
        job.close()


@pytest.mark.slow
def test_frozen_rank_times_out(tiny_data: dict, tmp_path: Path) -> None:
    """Rank 1 is frozen (SIGSTOP) mid-training: it neither exits nor closes its sockets, so
    torchrun sees nothing wrong and only ``train.dist_timeout`` can end the wait. Rank 0 must
    give up on its own within the timeout (plus slack), on every collective it may block in
    (the default group *and* the SyncBatchNorm group); then the job exits non-zero.

    Once rank 0 has exited, the frozen rank is resumed so that torchrun's SIGTERM (pending on a
    stopped process) takes effect at once instead of after torchrun's 30 s SIGKILL grace.
    """
    job = _Job(tiny_data, tmp_path)
    try:
        first_ckpt = job.wait_for_training()
        rank0, victim = job.worker(0), job.worker(1)
        job.remember_processes()
        start0 = job.spawned[rank0]
        t_stop = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        bound = DIST_TIMEOUT + 25
        while _running(rank0, start0) and time.monotonic() - t_stop < bound:
            time.sleep(0.2)
        took = time.monotonic() - t_stop
        os.kill(victim, signal.SIGCONT)
        assert not _running(rank0, start0), (
            f"rank 0 still waits {took:.0f} s after rank 1 froze (dist_timeout "
            f"{DIST_TIMEOUT:.0f} s): a collective ignores train.dist_timeout\n{job.output()}"
        )
        try:
            rc = job.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun did not end after rank 0 failed:\n{job.output()}")
        out = job.output()
        assert rc != 0, out
        assert took >= DIST_TIMEOUT * 0.5, f"rank 0 ended after only {took:.1f} s\n{out}"
        # ... because a collective gave up after exactly train.dist_timeout.
        timed_out = rf"\[rank0\]: .*Timed out waiting {int(DIST_TIMEOUT * 1000)}ms"
        assert re.search(timed_out, out), out
        _assert_ended_cleanly(job, out, first_ckpt)
        print(f"rank 1 frozen after checkpoint {first_ckpt}; rank 0 gave up {took:.1f} s later")
    finally:
        job.close()


def _frozen_peer_worker(rank: int, store: str, done: Any, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=timeout_s),
    )  # fmt: skip
    try:
        bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), "cpu")[0].train()
        if rank == 1:
            done.wait(timeout_s + 20)  # alive and connected, never joining the all_reduce
            return
        t0 = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match="[Tt]imed out"):
                bn(torch.randn(2, 3, 4, 4))
        finally:
            done.set()
        took = time.monotonic() - t0
        assert took < timeout_s + 10, f"the SyncBatchNorm all_reduce waited {took:.1f} s"
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_group_honours_dist_timeout(tmp_path: Path) -> None:
    """The CPU SyncBatchNorm's own gloo group times out like the default group.

    ``dist.new_group`` does not inherit the default group's timeout (torch gives it 30 min), so
    before the fix a frozen rank stalled the others in the BatchNorm statistics all_reduce far
    beyond ``train.dist_timeout``. Fast in-process version of ``test_frozen_rank_times_out``.
    """
    done = mp.get_context("fork").Event()
    mp.start_processes(
        _frozen_peer_worker, args=(str(tmp_path / "store"), done, 3.0), nprocs=2,
        start_method="fork",
    )  # fmt: skip
