"""A run started with ``train.init_weights`` starts from those weights, and says what it loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _engine_tiny import tiny_config_dict
from pspnet.config import Config
from pspnet.engine.train import train


def _records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


def _first_loss(work: Path) -> float:
    return next(r["loss"] for r in _records(work) if r["event"] == "train")


@pytest.mark.slow
def test_a_fine_tuned_run_starts_from_its_weights(tiny_data: dict, tmp_path: Path) -> None:
    # a source trained a little on the tiny data (the slow part of this test)
    source = tiny_config_dict(tiny_data, tmp_path / "source", max_iter=24)
    source["optim"]["lr"] = 0.02
    trained = train(Config.from_dict(source), progress=False).final_dir

    def one_step(name: str, **train_: object) -> Path:
        cfg = tiny_config_dict(tiny_data, tmp_path / name, max_iter=1, **train_)
        train(Config.from_dict(cfg), progress=False)
        return tmp_path / name

    scratch = _first_loss(one_step("scratch"))
    tuned_dir = one_step("tuned", init_weights=str(trained))
    tuned = _first_loss(tuned_dir)
    # same data, seed and first batch: only the starting weights differ
    assert tuned < 0.5 * scratch, (tuned, scratch)

    events = [r["event"] for r in _records(tuned_dir)]
    assert events[:2] == ["start", "init_weights"]  # after its run's start, as readers expect
    rec = next(r for r in _records(tuned_dir) if r["event"] == "init_weights")
    assert rec["source"] == rec["path"] == str(trained) and rec["layout"] == "pspnet"
    assert rec["loaded"] == rec["total"] and rec["reset"] == rec["missing"] == rec["unused"] == []
    saved = Config.from_yaml(tuned_dir / "config.yaml")
    assert saved.train.init_weights == str(trained)  # recorded like any other key


@pytest.mark.slow
def test_fine_tuning_to_another_class_count_resets_the_classifiers(
    tiny_data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tiny_config_dict(tiny_data, tmp_path / "source", max_iter=1)
    trained = train(Config.from_dict(source), progress=False).final_dir
    cfg = tiny_config_dict(tiny_data, tmp_path / "four", max_iter=1, init_weights=str(trained))
    cfg["model"]["num_classes"] = 4  # the tiny labels use 0..2 of them
    with caplog.at_level("INFO", logger="pspnet.train"):
        train(Config.from_dict(cfg), progress=False)
    rec = next(r for r in _records(tmp_path / "four") if r["event"] == "init_weights")
    reset = {r["name"]: (r["file"], r["model"]) for r in rec["reset"]}
    assert reset == {
        "head.classifier.weight": ([3, 32, 1, 1], [4, 32, 1, 1]),
        "head.classifier.bias": ([3], [4]),
        "aux_head.classifier.weight": ([3, 16, 1, 1], [4, 16, 1, 1]),
        "aux_head.classifier.bias": ([3], [4]),
    }
    assert rec["loaded"] == rec["total"] - 4 and not rec["missing"] and not rec["unused"]
    said = caplog.text
    assert f"init weights from {trained} (pspnet): loaded {rec['total'] - 4} of " in said
    assert "reset, shape differs (re-initialised): head.classifier.weight (file 3x32x1x1, " \
           "model 4x32x1x1)" in said
