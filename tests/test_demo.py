"""The embedded demo runs end to end (a few seconds of training) and writes a report."""

from __future__ import annotations

from pathlib import Path

from pspnet.demo import run_demo


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
