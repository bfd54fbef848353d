"""Poly learning rate, 10x LR groups by module, and the deterministic data order."""

from __future__ import annotations

import pytest
import torch

from pspnet.engine.distributed import TrainBatchSampler, epoch_permutation, shard_indices
from pspnet.engine.optim import PolySchedule, build_optimizer, param_groups
from pspnet.models import create_model


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    return create_model("pspnet_r18", 3, head_channels=16, aux_channels=8, ppm_channels=8)


def test_groups_are_formed_by_module(small_model: torch.nn.Module) -> None:
    groups = param_groups(small_model, weight_decay=1e-4, head_lr_mult=10.0)
    by_name = {g["name"]: g for g in groups}
    backbone = {id(p) for p in small_model.backbone.parameters()}
    new = {id(p) for m in (small_model.head, small_model.aux_head) for p in m.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == backbone
    assert {id(p) for p in by_name["head"]["params"]} == new
    assert by_name["head"]["lr_mult"] == 10.0 and by_name["backbone"]["lr_mult"] == 1.0
    n_all = sum(1 for _ in small_model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_all


def test_poly_lr_and_10x(small_model: torch.nn.Module) -> None:
    opt = build_optimizer(small_model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    assert opt.defaults["momentum"] == 0.9
    sched = PolySchedule(0.01, max_iter=100, power=0.9)
    for it in (0, 1, 50, 99, 100):
        base = sched.apply(opt, it)
        expected = 0.01 * (1 - it / 100) ** 0.9
        assert base == pytest.approx(expected)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["backbone"] == pytest.approx(expected)
        assert lrs["head"] == pytest.approx(10 * expected)
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)


def test_replan_keeps_lr_continuous_and_ends_at_zero() -> None:
    s = PolySchedule(0.1, None, 0.9)
    assert s.lr(0) == s.lr(5) == 0.1  # not planned yet: base LR
    s.replan(5, 105)
    assert s.lr(5) == pytest.approx(0.1)
    before = s.lr(40)
    s.replan(40, 200)
    assert s.lr(40) == pytest.approx(before)
    assert s.lr(200) == 0.0 and s.lr(120) < before
    s2 = PolySchedule(1.0, None)
    s2.load_state_dict(s.state_dict())
    assert s2.lr(150) == s.lr(150)


def test_sampler_shards_every_batch_disjointly_and_resumes() -> None:
    n, batch, world, accum = 37, 8, 2, 2
    per_rank = []
    for rank in range(world):
        s = TrainBatchSampler(n, batch, accum_steps=accum, rank=rank, world_size=world, seed=3)
        s.set_epoch(1)
        per_rank.append(list(s))
    assert per_rank[0][0][0][0] == 1  # (epoch, index) pairs
    steps = n // batch
    perm = epoch_permutation(n, 3, 1).tolist()
    for step in range(steps):
        got = sorted(i for r in range(world) for m in range(accum)
                     for _, i in per_rank[r][step * accum + m])
        assert got == sorted(perm[step * batch:(step + 1) * batch])
    # Starting inside the epoch replays exactly the remaining batches.
    s = TrainBatchSampler(n, batch, accum_steps=accum, rank=1, world_size=world, seed=3)
    s.set_epoch(1, start_step=2)
    assert list(s) == per_rank[1][2 * accum:]
    # Other epochs and seeds give other orders; the global RNG is not touched.
    state = torch.get_rng_state()
    assert epoch_permutation(n, 3, 2).tolist() != perm
    assert epoch_permutation(n, 4, 1).tolist() != perm
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainBatchSampler(5, 8)
    with pytest.raises(ValueError, match="does not split"):
        TrainBatchSampler(50, 6, world_size=4)


def test_shard_indices_cover_once() -> None:
    shards = [list(shard_indices(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
