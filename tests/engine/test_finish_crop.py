"""The run's last share on a larger crop (``data.finish_crop_size`` / ``data.finish_share``)
and at another output stride (``data.finish_output_stride``): config checks, the budget's
two-part plan, the switch in the loop (weights and momentum carried over), and an exact
resume."""

from __future__ import annotations

import json
import signal
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _engine_tiny import tiny_config
from pspnet.checkpoint import read_meta
from pspnet.config import Config, ConfigError, DataConfig
from pspnet.engine import losses
from pspnet.engine.budget import Budget
from pspnet.engine.distributed import DistInfo
from pspnet.engine.optim import build_optimizer
from pspnet.engine.setup import build_network, finish_ratios, switch_network
from pspnet.engine.train import TrainingInterrupted, train
from pspnet.models import build_model

# tiny_data's images are 40x48; the run's crop is 32x32.
FINISH = ["data.finish_crop_size=[40,48]", "data.finish_share=0.5"]
# Stride 16 until the switch, the paper's 8 after it.
STRIDE = ["model.output_stride=16", "data.finish_output_stride=8"]


def _cfg(tiny_data: dict, work: Path, *sets: str, **train_opts: object) -> Config:
    opts = {"max_iter": 10, "batch_size": 2, "checkpoint_interval": 3, **train_opts}
    return tiny_config(tiny_data, work, **opts).with_overrides([*FINISH, *sets])


def _events(work: Path, kind: str) -> list[dict]:
    lines = (work / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def _label_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (height, width) of every batch the loss sees, in order."""
    seen: list[tuple[int, int]] = []
    original = losses.PSPLoss.forward

    def recording(self, outputs, target):  # type: ignore[no-untyped-def]
        seen.append(tuple(target.shape[-2:]))
        return original(self, outputs, target)

    monkeypatch.setattr(losses.PSPLoss, "forward", recording)
    return seen


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"finish_crop_size": [40, 48]}, "data.finish_share"),
        ({"finish_share": 0.3}, "data.finish_crop_size"),
        ({"finish_crop_size": 40, "finish_share": 1.0}, "data.finish_share"),
        ({"finish_crop_size": 40, "finish_share": -0.1}, "data.finish_share"),
        ({"finish_crop_size": [4, 48], "finish_share": 0.3}, "data.finish_crop_size"),
        ({"finish_crop_size": 40, "finish_share": 0.3, "finish_output_stride": 12},
         "data.finish_output_stride"),
        ({"finish_crop_size": 40, "finish_share": 0.3, "finish_output_stride": True},
         "data.finish_output_stride"),
        ({"finish_output_stride": 8}, "data.finish_output_stride"),  # no last share
    ],
)
def test_finish_settings_are_checked_by_name(values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DataConfig(**values)


def test_one_finish_side_is_a_square() -> None:
    dc = DataConfig(finish_crop_size=40, finish_share=0.25)
    assert dc.finish_crop_size == (40, 40) and dc.finish_share == 0.25


def test_budget_plans_the_finishing_share_at_its_own_step_cost() -> None:
    b = Budget(100.0, warmup=2, measure=5, finish_share=0.5, finish_ratio=2.0)
    for i in range(7):
        b.record_step(100.0 if i < 2 else 1.0)
    plan = b.replan(7, 10.0, val_enabled=False, val_every=None, ckpt_every=None)
    # From 10 s on, 85 s are available (less the final save, 1 % and two steps). The share
    # begins at 50 s: 40 steps of 1 s before it, then the other 45 s at 2 s a step.
    avail = 100.0 - 10.0 - 2.0 - 1.0 - 2.0
    assert plan.finish_at == 7 + 40
    assert plan.max_iter == 7 + 40 + int((avail - 40) / 2.0)
    # Without the share the same budget would plan one step a second.
    plain = Budget(100.0, warmup=2, measure=5)
    plain.step_times = list(b.step_times)
    assert plain.replan(7, 10.0, val_enabled=False, val_every=None,
                        ckpt_every=None).max_iter == 7 + int(avail)
    # Once it has begun, its own steps are timed afresh before the next plan.
    b.start_finish()
    assert b.finishing and not b.ready() and b.finish_start_s() is None
    for i in range(7):
        b.record_step(100.0 if i < 2 else 2.0)
    later = b.replan(60, 55.0, val_enabled=False, val_every=None, ckpt_every=None)
    assert later.finish_at is None and later.max_iter == 60 + int((100 - 55 - 3 - 4) / 2.0)


def test_a_validation_measured_before_the_switch_is_scaled_to_the_new_stride() -> None:
    b = Budget(100.0, warmup=1, measure=1, finish_share=0.5, finish_ratio=4.0,
               finish_val_ratio=3.0)
    b.val_s = 2.0
    b.start_finish()
    assert b.val_s == 6.0 and b.val_cost() == 6.0


def test_finish_ratios_count_crops_for_steps_and_the_stride_for_validations(
    tiny_data: dict, tmp_path: Path
) -> None:
    crop_only = tiny_config(tiny_data, tmp_path).with_overrides(FINISH)
    step, val = finish_ratios(crop_only)
    assert val == 1.0  # the same stride: a validation costs what it did
    assert step == pytest.approx(40 * 48 / (32 * 32), rel=0.1)  # about the pixel ratio
    strided = crop_only.with_overrides(STRIDE)
    step16, val16 = finish_ratios(strided.with_overrides(["data.finish_output_stride=16"]))
    step8, val8 = finish_ratios(strided)
    assert val16 == 1.0 and val8 > 1.5  # a validation at stride 8 costs more than at 16
    assert step8 == step16  # the plan before the switch counts steps at the run's own stride
    assert finish_ratios(tiny_config(tiny_data, tmp_path)) == (1.0, 1.0)  # no last share


def test_switch_network_carries_weights_and_momentum(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path).with_overrides([*FINISH, *STRIDE])
    net, model = build_network(cfg, DistInfo(), None)
    oc = cfg.optim
    optimizer = build_optimizer(net, lr=oc.lr, momentum=oc.momentum,
                                weight_decay=oc.weight_decay, head_lr_mult=oc.head_lr_mult)
    out = net(torch.randn(2, 3, 32, 32))
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    optimizer.step()  # momentum buffers now hold something
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    run = types.SimpleNamespace(cfg=cfg, info=DistInfo(), net=net, model=model,
                                optimizer=optimizer, model_config=cfg.model)
    switch_network(run)  # type: ignore[arg-type]
    assert run.net is net  # before the last share: nothing changes
    run.model_config = cfg.finish_model()
    rng = torch.get_rng_state()
    switch_network(run)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert run.net is not net and run.model is run.net and run.optimizer is not optimizer
    assert run.net.config.output_stride == 8
    geometry = dict(build_model(cfg.finish_model()).named_modules())
    convs = [(n, m) for n, m in run.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert all((m.stride, m.dilation, m.padding) == (geometry[n].stride, geometry[n].dilation,
                                                     geometry[n].padding) for n, m in convs)
    assert any(m.dilation != dict(net.named_modules())[n].dilation for n, m in convs)
    after = run.net.state_dict()
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    params = list(run.net.parameters())
    assert all(torch.equal(run.optimizer.state[p]["momentum_buffer"], m)
               for p, m in zip(params, momentum, strict=True))
    assert [len(g["params"]) for g in run.optimizer.param_groups] == [
        len(g["params"]) for g in optimizer.param_groups]
    assert [g["lr"] for g in run.optimizer.param_groups] == [
        g["lr"] for g in optimizer.param_groups]


def test_the_last_share_trains_and_saves_at_its_output_stride(tiny_data: dict,
                                                               tmp_path: Path) -> None:
    work = tmp_path / "run"
    train(_cfg(tiny_data, work, *STRIDE, val_interval=4, val_unit="iter"),
          progress=False)
    (event,) = _events(work, "finish_crop")
    assert event["iter"] == 5 and event["output_stride"] == 8
    assert read_meta(work / "final").model.output_stride == 8  # final/ loads at stride 8
    assert yaml_stride(work) == 16  # the run's own config keeps the stride it started with
    # Validations before the switch ran at 16, after it at 8: both are scored.
    assert [e["iter"] for e in _events(work, "val")] == [4, 8, 10]
    if (work / "best").exists():
        best_iter = next(e["iter"] for e in reversed(_events(work, "val")) if e["best"])
        assert read_meta(work / "best").model.output_stride == (16 if best_iter < 5 else 8)


def yaml_stride(work: Path) -> int:
    import yaml

    return yaml.safe_load((work / "config.yaml").read_text())["model"]["output_stride"]


def test_last_share_of_the_steps_trains_on_the_finish_crop(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _label_sizes(monkeypatch)
    result = train(_cfg(tiny_data, tmp_path / "run"), progress=False)
    assert result.iterations == 10
    assert sizes == [(32, 32)] * 5 + [(40, 48)] * 5
    (event,) = _events(tmp_path / "run", "finish_crop")
    assert event["iter"] == 5 and event["crop_size"] == [40, 48]


@pytest.mark.parametrize("sets", [(), tuple(STRIDE)], ids=["crop", "crop-and-stride"])
def test_resume_after_the_switch_is_bit_identical(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sets: tuple[str, ...]
) -> None:
    reference = tmp_path / "reference"
    train(_cfg(tiny_data, reference, *sets), progress=False)

    work = tmp_path / "interrupted"
    original = losses.PSPLoss.forward
    calls = [0]

    def interrupt_at_step_7(self, outputs, target):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 7:  # as a Ctrl+C would: the step finishes, a checkpoint is written
            signal.raise_signal(signal.SIGINT)
        return original(self, outputs, target)

    monkeypatch.setattr(losses.PSPLoss, "forward", interrupt_at_step_7)
    with pytest.raises(TrainingInterrupted):
        train(_cfg(tiny_data, work, *sets), progress=False)
    monkeypatch.setattr(losses.PSPLoss, "forward", original)
    sizes = _label_sizes(monkeypatch)
    result = train(_cfg(tiny_data, work, *sets, resume="auto"), progress=False)
    assert result.iterations == 10 and sizes == [(40, 48)] * 3  # the finish crop, resumed
    assert read_meta(work / "final").model == read_meta(reference / "final").model
    a = load_file(work / "final" / "model.safetensors")
    b = load_file(reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
