"""pspnet.engine.run_report: the report of a training run (``pspnet report WORK_DIR`` and the
end of every training)."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from _engine_tiny import tiny_config
from pspnet.cli import main
from pspnet.engine import run_report
from pspnet.engine.train import train
from pspnet.report.run_page import PAGE, PICTURES

pytestmark = pytest.mark.slow  # each test trains or scores a tiny model


@pytest.fixture(scope="module")
def trained(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration run with two validations (read only: copy before changing)."""
    work = tmp_path_factory.mktemp("report") / "run"
    train(tiny_config(tiny_data, work, max_iter=4, val_interval=2, val_unit="iter"),
          progress=False)
    return work


def _pictures_of(page: Path) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', page.read_text()))


def test_training_ends_with_a_report_naming_every_chart(trained: Path) -> None:
    page = trained / "report" / PAGE
    assert page.is_file()
    assert _pictures_of(page) == set(PICTURES.values())
    for name in PICTURES.values():
        with Image.open(page.parent / name) as img:
            assert img.format == "PNG" and min(img.size) > 50
    text = page.read_text()
    # The table reads the log; the scores are the weights' on all 3 validation images.
    assert "4 of 4 planned" in text and "yes (completed)" in text
    assert "scored on all 3 validation images" in text


def test_cli_report_redraws_and_caps_the_scored_images(trained: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "run"
    shutil.copytree(trained, work)
    shutil.rmtree(work / "report")
    assert main(["report", str(work), "--max-images", "2", "--overlays", "1", "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {work / 'report' / PAGE}"
    text = (work / "report" / PAGE).read_text()
    assert "scored on 2 of the 3 (evenly spaced) validation images" in text
    assert "Overlays (1 validation images" in text
    with Image.open(work / "report" / "overlays.png") as one, \
            Image.open(trained / "report" / "overlays.png") as three:
        assert one.height < three.height  # one row instead of three


def test_report_without_validation_data_keeps_the_curves(trained: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(trained, work)
    cfg = (work / "config.yaml").read_text()
    (work / "config.yaml").write_text(re.sub(r"val_list: .*", "val_list: null", cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no validation set is a choice, not a failure to warn of
        page = run_report.write_report(work)
    assert _pictures_of(page) == {PICTURES["loss"], PICTURES["val_miou"]}
    assert "No validation pictures: the run has no validation set" in page.read_text()


def test_report_of_a_folder_without_a_log_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training work directory (no log.jsonl)" in err[0]


def test_without_matplotlib_report_says_which_extra(
        trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(trained)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'pspnet[report]'" in err[0]


def test_a_report_that_fails_never_fails_the_training(
        tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_report, "write_report", broken)
    work = tmp_path / "run"
    with pytest.warns(UserWarning, match="report was not written: disk full"):
        result = train(tiny_config(tiny_data, work, max_iter=2), progress=False)
    assert result.stop_reason == "completed" and (work / "final").is_dir()
    assert not (work / "report").exists()


def test_a_run_without_validation_gets_overlays_but_no_extra_scoring(
        tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scored: list[int] = []
    real = run_report.evaluate_model

    def counting(model: object, data: object, **kwargs: object) -> object:
        scored.append(len(data))  # type: ignore[arg-type]
        return real(model, data, **kwargs)

    monkeypatch.setattr(run_report, "evaluate_model", counting)
    work = tmp_path / "run"
    train(tiny_config(tiny_data, work, max_iter=2, val_interval=0), progress=False)
    page = work / "report" / PAGE
    assert _pictures_of(page) == {PICTURES[k] for k in ("loss", "val_miou", "overlays")}
    assert "not scored: validation was off in this run" in page.read_text()
    assert scored == [3]  # only the overlay images were predicted
    assert main(["report", str(work), "-q"]) == 0  # asked for: scored
    assert _pictures_of(page) == set(PICTURES.values())
