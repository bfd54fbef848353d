"""The embedded demo: fixed iterations and seeds, restartable, the seed-agreement check, report."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet.checkpoint import load_model
from pspnet.cli import build_parser
from pspnet.config import ConfigError
from pspnet.data.scenes import BOAT, CAR
from pspnet import create_model
from pspnet.data.context_scenes import render_context_scene
from pspnet.data.scenes import WATER
from pspnet.demo import (DEMO_MODELS, FCN_REACH_PX, DemoResult, DemoSettings,
                         demo_model_options, run_demo, seed_agreement, vessel_accuracy)
from pspnet.demo import run as demo_run

# --------------------------------------------------------------------------------------------
# The seed-agreement check on hand-made numbers


def test_agreement_holds_when_ahead_on_every_seed_by_more_than_the_spread() -> None:
    a = seed_agreement([0.168, 0.203, 0.224])
    assert a.ahead == 3 and a.holds
    assert a.mean == pytest.approx(0.19833, abs=1e-5)
    assert a.spread == pytest.approx(statistics.stdev([0.168, 0.203, 0.224]))  # n - 1
    assert a.line() == ("PSPNet ahead on the context classes on 3 of 3 seeds; mean gap +0.198 "
                        "vs seed spread 0.028 (sd of the paired differences): holds")


def test_agreement_does_not_hold_with_one_seed_behind() -> None:
    a = seed_agreement([0.30, 0.25, -0.01])
    assert a.ahead == 2 and not a.holds
    assert a.mean > a.spread  # the gap alone would pass: the seed behind decides
    assert a.line().startswith("PSPNet ahead on the context classes on 2 of 3 seeds;")
    assert a.line().endswith(": does not hold")


def test_agreement_does_not_hold_when_the_gap_is_within_the_spread() -> None:
    a = seed_agreement([0.01, 0.50, 0.02])
    assert a.ahead == 3 and not a.holds
    assert a.spread == pytest.approx(0.28006, abs=1e-5) and a.mean == pytest.approx(0.17667,
                                                                                    abs=1e-5)
    # Two seeds: mean 2, sd sqrt(2) -> holds; mean 1, sd sqrt(2) -> does not.
    assert seed_agreement([1.0, 3.0]).holds and not seed_agreement([0.0001, 2.0]).holds


def test_agreement_edge_cases() -> None:
    one = seed_agreement([0.5])
    assert one.ahead == 1 and not one.holds and math.isnan(one.spread)
    assert "n/a with one seed: does not hold" in one.line()
    tie = seed_agreement([0.0, 0.0, 0.0])  # equal is not ahead
    assert tie.ahead == 0 and not tie.holds
    missing = seed_agreement([0.2, math.nan, 0.3])  # a class absent from truth and prediction
    assert missing.ahead == 2 and not missing.holds
    with pytest.raises(ValueError, match="at least one"):
        seed_agreement([])


def test_vessel_accuracy_counts_boat_car_confusions_only() -> None:
    conf = np.zeros((6, 6), np.int64)
    conf[BOAT, BOAT], conf[BOAT, CAR], conf[CAR, CAR], conf[CAR, BOAT] = 30, 10, 20, 40
    conf[BOAT, 0] = conf[0, CAR] = 1000  # vessel vs background: not counted
    assert vessel_accuracy(conf) == pytest.approx(50 / 100)
    assert math.isnan(vessel_accuracy(np.zeros((6, 6))))


# --------------------------------------------------------------------------------------------
# Settings and the CLI


def test_settings_are_validated_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--seeds must be an integer >= 1, got 0"):
        DemoSettings(seeds=0)
    with pytest.raises(ConfigError, match=r"--iterations must be an integer >= 1, got 2.5"):
        DemoSettings(iterations=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--gap 60 leaves no room .* use --gap 14 or less"):
        DemoSettings(size=32, gap=60)
    with pytest.raises(ConfigError, match=r"--width must be an integer >= 1, got 0"):
        DemoSettings(width=0)
    with pytest.raises(ConfigError, match=r"--min-scale must be in \[0.25, 1\], got 1.5"):
        DemoSettings(min_scale=1.5)
    assert DemoSettings(seeds=3, seed_start=5).seed_list() == [5, 6, 7]
    with pytest.raises(ConfigError, match=r"--scene-width must be an integer in \[32, --size "
                                          r"448\] .*, got 500"):
        DemoSettings(scene_width=500)
    with pytest.raises(ConfigError, match=r"--scene-width .* got 31"):
        DemoSettings(scene_width=31)
    # By default half as wide as tall; the gap runs along the height: 264 fits 448x224.
    assert DemoSettings().scene_size == (448, 224)
    assert DemoSettings(size=40, gap=10).scene_size == (40, 32)  # at least 32 wide
    assert DemoSettings(scene_width=448).scene_size == (448, 448)  # square on request
    with pytest.raises(ConfigError, match=r"--gap 264 leaves no room for a vessel in 224x112"):
        DemoSettings(size=224, gap=264)


def test_a_narrow_scene_has_its_own_folders_and_crop(tmp_path: Path,
                                                     no_scenes: list[dict[str, object]]) -> None:
    s = DemoSettings(iterations=2, seeds=1, size=64, scene_width=32, gap=20, n_train=8,
                     n_val=2, batch_size=2)
    square = DemoSettings(size=64, scene_width=64, gap=20)
    assert s.scene_name == "64x32" and square.scene_name == "64"
    # square runs record no scene_width, as before the field existed
    assert square.run_settings(0)["scene_width"] is None
    assert demo_run._run_dir(tmp_path, s, "fcn", 0).name == "fcn_64x32px_gap20_w16_s0_2it"
    assert s.run_settings(0)["scene_width"] == 32
    cfg = demo_run._config(tmp_path, tmp_path / "w", "fcn", s, 0)
    assert tuple(cfg.data.crop_size) == (64, 32)
    with pytest.raises(_Stop):
        run_demo(tmp_path, s)
    assert no_scenes[-1]["size"] == (64, 32)
    assert build_parser().parse_args(["demo", "--scene-width", "224"]).scene_width == 224


def test_a_square_run_recorded_before_scene_width_is_resumed(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    stamp = {k: v for k, v in SMALL.run_settings(0).items() if k != "scene_width"}
    _fake_run(tmp_path, 0, stamp)  # as written before the field existed
    with pytest.raises(_Stop):  # accepted: it goes on to the scenes
        run_demo(tmp_path, SMALL)


def test_cli_defaults_are_the_demo_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    d = DemoSettings()
    assert (args.iterations, args.seeds, args.seed_start, args.size, args.scene_width, args.gap,
            args.width, args.min_scale) == (d.iterations, d.seeds, d.seed_start, d.size,
                                            d.scene_width, d.gap, d.width, d.min_scale)
    assert (d.iterations, d.seeds, d.size, d.gap, d.width, d.min_scale, d.batch_size) == (
        120, 3, 448, 264, 16, 1.0, 4)


# --------------------------------------------------------------------------------------------
# Refusing runs trained with other settings (no training: the scene generator is stopped)


class _Stop(Exception):
    """Raised by the fake scene generator: the tests stop before any data or training."""


@pytest.fixture
def no_scenes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def fake(*args: object, **kwargs: object) -> Path:
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(demo_run, "generate_scenes", fake)
    return calls


SMALL = DemoSettings(iterations=2, seeds=1, size=32, gap=12, n_train=8, n_val=2, batch_size=2)


def _fake_run(out: Path, seed: int, stamp: dict[str, object] | None) -> Path:
    work = out / "runs" / f"fcn_32px_gap12_w16_s{seed}_2it"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "last.pt").write_bytes(b"")
    if stamp is not None:
        (work / "demo_settings.json").write_text(json.dumps(stamp))
    return work


def test_demo_refuses_to_resume_a_run_with_other_settings(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    _fake_run(tmp_path, 0, {**SMALL.run_settings(0), "n_train": 600})
    with pytest.raises(ConfigError, match=r"fcn_32px_gap12_w16_s0_2it holds a demo run trained with "
                                          r"other settings \(n_train=600, not 8\).*--fresh"):
        run_demo(tmp_path, SMALL)
    assert no_scenes == []  # refused before anything was generated
    _fake_run(tmp_path, 1, None)
    with pytest.raises(ConfigError, match="settings are unknown; re-run with --fresh"):
        run_demo(tmp_path, DemoSettings(**{**SMALL.__dict__, "seed_start": 1}))
    with pytest.raises(_Stop):  # other seeds have their own runs
        run_demo(tmp_path, DemoSettings(**{**SMALL.__dict__, "seed_start": 2}))


def test_demo_fresh_deletes_the_runs_of_its_seeds_only(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    mine, other = _fake_run(tmp_path, 0, None), _fake_run(tmp_path, 1, None)
    with pytest.raises(_Stop):
        run_demo(tmp_path, SMALL, fresh=True)
    assert not mine.exists() and other.is_dir()
    assert no_scenes[-1]["overwrite"] is True and no_scenes[-1]["mode"] == "context"


# --------------------------------------------------------------------------------------------
# End to end: tiny scenes, 2-3 iterations


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


TINY = DemoSettings(iterations=3, seeds=2, size=32, gap=12, n_train=8, n_val=2, batch_size=2)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoResult]:
    """The demo once at 32 px: 2 seeds x 2 models x 3 iterations (shared by the tests below)."""
    out = tmp_path_factory.mktemp("demo") / "a"
    return out, run_demo(out, TINY, progress=False)


@pytest.mark.slow
def test_demo_trains_the_fixed_iterations_and_reports(tiny_demo: tuple[Path, DemoResult]) -> None:
    out, result = tiny_demo
    recs = _records(out)
    assert [(r["model"], r["seed"]) for r in recs] == [
        ("fcn", 0), ("pspnet", 0), ("fcn", 1), ("pspnet", 1)]
    assert all(r["iterations_done"] == 3 for r in recs)  # the iterations asked, no time budget
    log = (out / str(recs[0]["weights"])).parent / "log.jsonl"
    ends = [json.loads(x) for x in log.read_text().splitlines() if '"event": "end"' in x]
    assert ends[-1]["iteration"] == 3 and ends[-1]["reason"] == "completed"
    # The report: files, the per-seed paired table, the verdict line.
    assert result.report == out / "report.html"
    for name in ("report.md", "report.html", "metrics.json", "iou_per_class.png",
                 "compare_00000.png", "compare_00001.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert result.line.startswith("PSPNet ahead on the context classes on ")
    assert f"**{result.line}**" in md and result.line in result.report.read_text()
    assert "| paired PSPNet − FCN | seed 0 | seed 1 | seeds where PSPNet is ahead |" in md
    assert "**3 iterations** per run, for seeds 0, 1" in md
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["verdict"] == result.line and len(summary["runs"]) == 4
    assert summary["agreement"]["holds"] == result.agreement.holds


@pytest.mark.slow
def test_demo_restarts_without_redoing_finished_runs(
    tiny_demo: tuple[Path, DemoResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "moved"  # a moved output folder is resumed too (paths are relative)
    shutil.copytree(tiny_demo[0], out)
    trained: list[str] = []
    real_train = demo_run.train

    def counting_train(cfg, progress=True):  # type: ignore[no-untyped-def]
        trained.append(Path(cfg.train.work_dir).name)
        return real_train(cfg, progress=progress)

    monkeypatch.setattr(demo_run, "train", counting_train)
    assert run_demo(out, TINY, progress=False).line == tiny_demo[1].line and trained == []
    recs = _records(out)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:3]))
    again = run_demo(out, TINY, progress=False)  # as if killed before the last run was recorded
    assert trained == ["pspnet_32px_gap12_w16_s1_3it"]
    assert again.agreement == tiny_demo[1].agreement


@pytest.mark.slow
def test_demo_same_seed_same_numbers_other_seed_other_weights(
    tiny_demo: tuple[Path, DemoResult], tmp_path: Path
) -> None:
    run_demo(tmp_path / "b", DemoSettings(**{**TINY.__dict__, "seeds": 1}), progress=False)
    a, b = _records(tiny_demo[0]), _records(tmp_path / "b")
    for ra, rb in zip(a[:2], b):  # seed 0 of both models, trained again from scratch
        assert ra["metrics"] == rb["metrics"] and ra["vessel_acc"] == rb["vessel_acc"]

    def weights(out: Path, rec: dict[str, object]) -> dict[str, torch.Tensor]:
        return load_model(out / str(rec["weights"])).state_dict()

    wa, wb = weights(tiny_demo[0], a[1]), weights(tmp_path / "b", b[1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical training
    w1 = weights(tiny_demo[0], a[3])  # PSPNet, seed 1
    assert not all(torch.equal(wa[k], w1[k]) for k in wa)  # the seed matters


# --------------------------------------------------------------------------------------------
# Context beyond the FCN's whole receptive field (the scene geometry the demo is moving to)


#: 384-px scenes, vessels at least 264 px from the context, backbone width 16.
BEYOND_REACH = DemoSettings(size=384, gap=264, width=16)


def _logits(model: str, image: np.ndarray) -> torch.Tensor:
    s = BEYOND_REACH
    torch.manual_seed(0)
    net = create_model(**demo_model_options(model, s)).eval()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - 0.5  # (1, 3, H, W)
    with torch.no_grad():
        return net(x)["out"][0]  # (classes, H, W)


@pytest.mark.parametrize("size", [(384, 384), DemoSettings().scene_size])
def test_the_fcn_cannot_see_the_context_and_pspnet_can(size: tuple[int, int]) -> None:
    """One scene rendered on water and on road: identical pixels but the context band. The
    demo's FCN gives every vessel pixel the very same logits (the band lies beyond its whole
    receptive field, so no amount of training can name the vessels); PSPNet's pyramid sees it.
    Square scenes and the default demo's (448x224, the band on the top or bottom edge)."""
    s = BEYOND_REACH
    img_w, lab_w = render_context_scene(np.random.default_rng(5), size, gap=s.gap,
                                        context="water")
    img_r, lab_r = render_context_scene(np.random.default_rng(5), size, gap=s.gap,
                                        context="road")
    vessels = lab_w == BOAT
    assert vessels.any() and (lab_r[vessels] == CAR).all()
    assert ((img_w != img_r).any(-1) == np.isin(lab_w, [WATER])).all()  # only the band differs
    changed = {}
    for model in DEMO_MODELS:
        diff = (_logits(model, img_w) - _logits(model, img_r)).abs().amax(0)  # (H, W)
        changed[model] = float(diff[torch.from_numpy(vessels)].max())
    assert changed["fcn"] < 1e-5, changed
    assert changed["pspnet"] > 1e-3, changed


def test_the_fcn_reach_is_what_the_demo_assumes() -> None:
    """The receptive field, measured: the gradient of the centre output pixel reaches 257 px
    at most (257 up/left, 249 down/right), fewer than the gap; the width does not change it."""
    s = BEYOND_REACH
    torch.manual_seed(0)
    net = create_model(**demo_model_options("fcn", s)).eval()
    size = 640
    x = torch.randn(1, 3, size, size, requires_grad=True)
    net(x)["out"][0, :, size // 2, size // 2].sum().backward()
    rows, cols = torch.nonzero(x.grad.abs().sum((0, 1)) > 0, as_tuple=True)
    reach = max(size // 2 - int(rows.min()), int(rows.max()) - size // 2,
                size // 2 - int(cols.min()), int(cols.max()) - size // 2)
    assert reach == FCN_REACH_PX == 257
    assert s.gap > reach
    assert DemoSettings().gap > reach  # the default demo's context is beyond it
