"""Nothing the user already has is overwritten without being asked.

``predict`` never writes over an input or over a file it did not write itself, and a folder
input never picks up its own masks and overlays; ``train`` does not overwrite a finished run
unless ``--overwrite`` (or a resume) says so, refuses ``--resume`` with nothing to resume,
locks its work directory, refuses non-finite hyper-parameters and never saves non-finite
weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pspnet
from _engine_tiny import tiny_config, tiny_config_dict
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.checkpoint.training import find_checkpoint
from pspnet.cli import main
from pspnet.config import Config, ConfigError
from pspnet.engine import setup as setup_mod
from pspnet.engine.safety import LOCK_FILE
from pspnet.engine.train import TrainingDiverged, train

# --------------------------------------------------------------------------------------------
# predict


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = pspnet.create_model("pspnet_r18", 3, head_channels=32)
    d = tmp_path_factory.mktemp("w") / "w"
    return save_weights(model, d, WeightsMeta(model.config, classes=("a", "b", "c")))


def _photo(path: Path, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(path)
    return path.read_bytes()


def test_predict_refuses_to_write_a_mask_over_its_input(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "d"
    d.mkdir()
    before = _photo(d / "photo.png")
    assert main(["predict", "--weights", str(weights), str(d / "photo.png"), "--out", str(d),
                 "-q"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(d / "photo.png") in err and "--out" in err
    assert (d / "photo.png").read_bytes() == before  # the photo is still the photo
    assert sorted(p.name for p in d.iterdir()) == ["photo.png"]  # nothing else written either


def test_predict_refuses_an_overlay_over_an_input(tmp_path: Path, weights: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    _photo(d / "a.jpg")
    before = _photo(d / "a_overlay.png", seed=1)  # the user's own file, also an input
    assert main(["predict", "--weights", str(weights), str(d / "a.jpg"), str(d / "a_overlay.png"),
                 "--out", str(d), "-q"]) == 2  # fmt: skip
    assert (d / "a_overlay.png").read_bytes() == before


def test_a_folder_predicted_into_itself_does_not_take_its_outputs_as_inputs(
    tmp_path: Path, weights: Path
) -> None:
    d = tmp_path / "d"
    d.mkdir()
    photo = _photo(d / "photo.jpg")
    for _ in range(2):  # the second run sees photo.png, photo_overlay.png, summary.json there
        assert main(["predict", "--weights", str(weights), str(d), "--out", str(d), "-q"]) == 0
        summary = json.loads((d / "summary.json").read_text())
        assert [Path(r["input"]).name for r in summary["written"]] == ["photo.jpg"]
    assert sorted(p.name for p in d.iterdir()) == [
        "photo.jpg", "photo.png", "photo_overlay.png", "summary.json"]
    assert (d / "photo.jpg").read_bytes() == photo


def test_predict_overwrites_its_own_outputs_but_not_the_users_files(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "labels"
    src.mkdir()
    out.mkdir()
    _photo(src / "x.jpg")
    label = _photo(out / "x.png", seed=2)  # e.g. a hand-made label: --out pointed at the wrong folder
    argv = ["predict", "--weights", str(weights), str(src), "--out", str(out), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out / "x.png") in err and "did not write" in err
    assert (out / "x.png").read_bytes() == label
    (out / "x.png").unlink()
    assert main(argv) == 0
    assert main(argv) == 0  # a second run replaces the masks the first one wrote


# --------------------------------------------------------------------------------------------
# train: finished runs, --resume, --overwrite


def _cfg(tiny_data: dict, work: Path, **train: object) -> Config:
    return tiny_config(tiny_data, work, **{"max_iter": 2, **train})


@pytest.fixture(scope="module")
def finished(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run (read only: tests copy it)."""
    work = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(tiny_data, work), progress=False)
    return work


def _snapshot(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_training_into_a_finished_run_is_refused(
    finished: Path, tiny_data: dict, tmp_path: Path
) -> None:
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    before = _snapshot(work)
    with pytest.raises(ConfigError, match="--resume") as e:
        train(_cfg(tiny_data, work), progress=False)
    assert str(work) in str(e.value) and "--overwrite" in str(e.value)
    assert _snapshot(work) == before


@pytest.mark.slow
def test_overwrite_starts_again(finished: Path, tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    (work / "notes.txt").write_text("mine")
    result = train(_cfg(tiny_data, work, max_iter=3, overwrite=True), progress=False)
    assert result.iterations == 3 and result.resumed_from is None
    assert find_checkpoint(work)[1]["iteration"] == 3  # type: ignore[index]
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1  # the old run's log went with it
    assert (work / "notes.txt").read_text() == "mine"  # only the run's own outputs are replaced
    with pytest.raises(ConfigError, match="overwrite"):  # both at once: which one?
        train(_cfg(tiny_data, work, overwrite=True, resume="auto"), progress=False)


@pytest.mark.slow
def test_resume_auto_continues_or_starts(finished: Path, tiny_data: dict, tmp_path: Path) -> None:
    """``resume: auto`` (bench scripts): resume if there is something, else start."""
    fresh = train(_cfg(tiny_data, tmp_path / "new", resume="auto"), progress=False)
    assert fresh.resumed_from is None and fresh.iterations == 2
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    again = train(_cfg(tiny_data, work, resume="auto"), progress=False)
    assert again.resumed_from == work / "checkpoints" / "last.pt" and again.iterations == 2


@pytest.mark.slow
@pytest.mark.parametrize("what", ["weights", "empty"])
def test_resume_with_nothing_to_resume_is_an_error(
    what: str, finished: Path, tiny_data: dict, tmp_path: Path
) -> None:
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    before = _snapshot(work)
    source = work / "final" if what == "weights" else tmp_path / "empty"
    source.mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="no training checkpoint") as e:
        train(_cfg(tiny_data, work, resume=str(source)), progress=False)
    assert str(source) in str(e.value)
    assert _snapshot(work) == before


@pytest.mark.slow
def test_the_cli_names_the_fix(finished: Path, tmp_path: Path, tiny_data: dict,
                               capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(tiny_config_dict(tiny_data, work, max_iter=2)))
    assert main(["train", "--config", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "--overwrite" in err
    assert main(["train", "--config", str(cfg), "--overwrite", "-q"]) == 0
    assert main(["train", "--config", str(cfg), "--resume", str(work / "final"), "-q"]) == 2
    assert "no training checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# train: the work-directory lock


@pytest.mark.slow
def test_a_work_dir_in_use_is_refused_naming_the_pid(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        with pytest.raises(ConfigError, match=f"process {other.pid}"):
            train(_cfg(tiny_data, work), progress=False)
        assert sorted(p.name for p in work.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        other.kill()
        other.wait()
    # The process is gone: its lock is stale and is taken over, with a warning.
    with pytest.warns(UserWarning, match=f"{other.pid}.*no longer running"):
        result = train(_cfg(tiny_data, work), progress=False)
    assert result.iterations == 2
    assert not (work / LOCK_FILE).exists()  # released at the end


@pytest.mark.slow
def test_a_failed_run_releases_its_lock(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    bad = tiny_config_dict(tiny_data, work, max_iter=2)
    bad["data"]["train_list"] = str(tmp_path / "missing.txt")
    with pytest.raises((ValueError, FileNotFoundError)):
        train(Config.from_dict(bad), progress=False)
    assert not (work / LOCK_FILE).exists()
    assert train(_cfg(tiny_data, work), progress=False).iterations == 2


# --------------------------------------------------------------------------------------------
# train: non-finite hyper-parameters and weights


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.weight_decay=.inf",
                                      "optim.head_lr_mult=.inf", "train.aux_weight=.inf"])
def test_non_finite_hyper_parameters_are_refused(
    override: str, tiny_data: dict, tmp_path: Path
) -> None:
    work = tmp_path / "run"
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*finite"):
        train(_cfg(tiny_data, work).with_overrides([override]), progress=False)
    assert not (work / "final").exists()


@pytest.mark.slow
def test_non_finite_weights_are_never_saved(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN in a BatchNorm running mean leaves the training loss finite (batch statistics)
    but breaks every prediction: training stops instead of saving it."""
    real = setup_mod.build_network

    def poisoned(*args, **kwargs):
        net, model = real(*args, **kwargs)
        bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_mean[0] = float("nan")
        return net, model

    monkeypatch.setattr(setup_mod, "build_network", poisoned)
    work = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"running_mean.*Lower the learning rate") as e:
        train(_cfg(tiny_data, work), progress=False)
    assert "optim.lr" in str(e.value)
    assert not (work / "final").exists() and find_checkpoint(work) is None
