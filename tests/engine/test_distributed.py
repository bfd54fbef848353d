"""Distributed training on the CPU: gloo, SyncBatchNorm, and a two-process torchrun job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _engine_tiny import tiny_config

from pspnet.checkpoint.training import load_checkpoint
from pspnet.engine.distributed import SyncBatchNorm2d, convert_sync_batchnorm


def _syncbn_worker(rank: int, store: str, data: torch.Tensor, coef: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        ref = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        model = convert_sync_batchnorm(torch.nn.Sequential(ref), "cpu")
        bn = model[0]
        assert isinstance(bn, SyncBatchNorm2d)
        # Reference: one process, the whole batch (separate copy of the parameters).
        full_bn = torch.nn.BatchNorm2d(3)
        full_bn.load_state_dict(bn.state_dict())
        x_full = data.clone().requires_grad_(True)
        (full_bn(x_full) * coef).sum().backward()
        # This rank: its half of the batch, statistics synchronised.
        half = slice(rank * 2, rank * 2 + 2)
        x = data[half].clone().requires_grad_(True)
        (bn(x) * coef[half]).sum().backward()
        assert torch.allclose(x.grad, x_full.grad[half], atol=1e-5), "input grads differ"
        for p in (bn.weight, bn.bias):
            dist.all_reduce(p.grad)
        assert torch.allclose(bn.weight.grad, full_bn.weight.grad, atol=1e-4)
        assert torch.allclose(bn.bias.grad, full_bn.bias.grad, atol=1e-4)
        assert torch.allclose(bn.running_mean, full_bn.running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var, full_bn.running_var, atol=1e-5)
        bn.eval()
        assert torch.allclose(bn(data), full_bn.eval()(data), atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_on_cpu_matches_full_batch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    data = torch.randn(4, 3, 5, 6, generator=g) * 3 + 1
    coef = torch.randn(4, 3, 5, 6, generator=g)
    mp.start_processes(
        _syncbn_worker, args=(str(tmp_path / "store"), data, coef), nprocs=2,
        start_method="fork",
    )  # fmt: skip


@pytest.mark.slow
def test_two_process_torchrun_training(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    cfg = tiny_config(
        tiny_data, work, max_iter=4, batch_size=4, checkpoint_interval=2, val_interval=2,
        val_unit="iter", dist_timeout=60,
    )  # fmt: skip
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pspnet", "train", "--config", str(cfg_file), "-q"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("trained 4 iterations") == 1, out  # rank 0 only
    records = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert [r["iter"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]
    vals = [r for r in records if r["event"] == "val"]
    assert [v["iter"] for v in vals] == [2, 4]
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (work / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in work.iterdir()) == [
        "best", "checkpoints", "config.yaml", "final", "log.jsonl"]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [
        "last.pt", "latest", "prev.pt"]


@pytest.mark.slow
def test_two_process_torchrun_evaluation_equals_one_process(tmp_path: Path) -> None:
    """`torchrun -m pspnet evaluate` on 2 processes: every image counted once, so the metrics
    equal a single-process run exactly (an odd number of images tests the uneven shard)."""
    from _engine_tiny import NUM_CLASSES, make_tiny_dataset

    from pspnet.checkpoint import WeightsMeta, save_weights
    from pspnet.config import ModelConfig
    from pspnet.models import build_model

    data = make_tiny_dataset(tmp_path / "d", n_train=1, n_val=5)
    torch.manual_seed(0)
    mc = ModelConfig(arch="pspnet_r18", num_classes=NUM_CLASSES, output_stride=16,
                     head_channels=16, aux=False)  # fmt: skip
    save_weights(build_model(mc).eval(), tmp_path / "w", WeightsMeta(model=mc))
    args = ["evaluate", "--weights", str(tmp_path / "w"), "--data-root", str(data["root"]),
            "--val-list", str(data["val"]), "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pspnet", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pspnet", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert a["setup"]["images"] == b["setup"]["images"] == 5
    for key in ("mIoU", "mAcc", "allAcc"):
        assert a[key] == b[key], key
    assert a["per_class"] == b["per_class"]
