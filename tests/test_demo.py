"""The embedded demo runs end to end (a few seconds of training) and writes a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pspnet import demo
from pspnet.config import ConfigError
from pspnet.data.scenes import ScenesMismatchError
from pspnet.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", minutes=0.1, n_train=16, n_val=3, size=64,
                      progress=False)
    html = report.read_text()
    assert "FCN" in html and "PSPNet" in html and "mIoU" in html
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "| boat |" in md and "| car |" in md
    assert (tmp_path / "demo" / "iou_per_class.png").is_file()
    assert len(list((tmp_path / "demo").glob("compare_*.png"))) == 3
    # Re-running reuses the data and the finished runs instead of starting over.
    again = run_demo(tmp_path / "demo", minutes=0.1, n_train=16, n_val=3, size=64,
                     progress=False)
    assert again == report
    # ... but never with another budget: that would keep the old one.
    with pytest.raises(ConfigError, match=r"--minutes 0.1, not --minutes 0.2"):
        run_demo(tmp_path / "demo", minutes=0.2, n_train=16, n_val=3, size=64, progress=False)


class _Stop(Exception):
    """Raised by the fake scene generator: the tests stop before any data or training."""


def _fake_run(out: Path, name: str, settings: dict[str, object] | None,
              config_yaml: str | None = None) -> Path:
    work = out / "runs" / name
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "last.pt").write_bytes(b"")
    if settings is not None:
        (work / "demo_settings.json").write_text(json.dumps(settings))
    if config_yaml is not None:
        (work / "config.yaml").write_text(config_yaml)
    return work


@pytest.fixture
def no_scenes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def fake(*args: object, **kwargs: object) -> Path:
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(demo, "generate_scenes", fake)
    return calls


SETTINGS = {"minutes": 0.5, "seed": 0, "n_train": 600, "n_val": 100}


def test_demo_refuses_to_resume_a_run_with_other_settings(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    _fake_run(tmp_path, "pspnet_64", SETTINGS)
    with pytest.raises(ConfigError, match=r"pspnet_64 holds a demo run trained with "
                                          r"--minutes 0.5, not --minutes 2; .*--fresh"):
        run_demo(tmp_path, minutes=2, size=64)
    with pytest.raises(ConfigError, match=r"--seed 0, not --seed 1"):
        run_demo(tmp_path, minutes=0.5, seed=1, size=64)
    with pytest.raises(ConfigError, match=r"n_train=600, not n_train=16"):
        run_demo(tmp_path, minutes=0.5, n_train=16, size=64)
    assert no_scenes == []  # refused before anything was generated
    with pytest.raises(_Stop):  # the same settings resume; another size has its own runs
        run_demo(tmp_path, minutes=0.5, size=64)
    with pytest.raises(_Stop):
        run_demo(tmp_path, minutes=2, size=32)


def test_demo_reads_the_budget_of_runs_without_a_settings_file(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    _fake_run(tmp_path, "fcn_64", None, "train:\n  time_budget: 4.0\n  seed: 0\n")
    with pytest.raises(ConfigError, match=r"--minutes 4, not --minutes 8"):
        run_demo(tmp_path, minutes=8, size=64)
    with pytest.raises(_Stop):
        run_demo(tmp_path, minutes=4, size=64)
    _fake_run(tmp_path, "pspnet_64", None)
    with pytest.raises(ConfigError, match="settings are unknown; re-run with --fresh"):
        run_demo(tmp_path, minutes=4, size=64)


def test_demo_fresh_deletes_the_earlier_runs_first(
    tmp_path: Path, no_scenes: list[dict[str, object]]
) -> None:
    old = [_fake_run(tmp_path, f"{k}_64", SETTINGS) for k in ("fcn", "pspnet")]
    other_size = _fake_run(tmp_path, "fcn_32", SETTINGS)
    with pytest.raises(_Stop):
        run_demo(tmp_path, minutes=2, size=64, fresh=True)
    assert not any(w.exists() for w in old) and other_size.is_dir()
    assert no_scenes[-1]["overwrite"] is True  # scenes made with another seed are replaced


def test_demo_names_fresh_when_the_scenes_differ(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def other_params(*args: object, **kwargs: object) -> Path:
        raise ScenesMismatchError("holds a scenes data set generated with other parameters")

    monkeypatch.setattr(demo, "generate_scenes", other_params)
    with pytest.raises(FileExistsError, match=r"scenes_64 holds scenes generated with other "
                                              r"parameters .*--fresh"):
        run_demo(tmp_path, seed=1, size=64)


def test_demo_keeps_other_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a scenes mismatch is told to use --fresh; another FileExistsError passes unchanged."""
    def file_in_the_way(*args: object, **kwargs: object) -> Path:
        raise FileExistsError("a file sits where the scenes folder should be")

    monkeypatch.setattr(demo, "generate_scenes", file_in_the_way)
    with pytest.raises(FileExistsError, match="a file sits where") as info:
        run_demo(tmp_path, seed=1, size=64)
    assert "--fresh" not in str(info.value)
