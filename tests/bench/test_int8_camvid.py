"""bench/int8_camvid.py: one table of the same weights in fp32 and as deployable int8 files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from camvid_fake import make_fake_camvid

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "int8_camvid.py"


@pytest.mark.slow
def test_fp32_and_int8_exports_in_one_table(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("onnxscript")
    import pspnet
    from pspnet.checkpoint import WeightsMeta

    root = make_fake_camvid(tmp_path / "camvid", n_test=2, size=(40, 56))
    for kind in ("images", "labels"):  # the calibration images come from the training split
        shutil.copytree(root / kind / "test", root / kind / "train")
    (root / "train.txt").write_text((root / "test.txt").read_text())
    model = pspnet.create_model("pspnet_r18", 11, head_channels=16, base_width=16)
    weights = pspnet.save_weights(model, tmp_path / "w" / "final", WeightsMeta(model=model.config))
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--weights", str(weights), "--data-root", str(root),
         "--calib", "2", "--precisions", "fp32,openvino-int8"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^\| (fp32|openvino-int8) \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|$",
                      run.stdout, re.MULTILINE)
    assert rows == ["fp32", "openvino-int8"], run.stdout
    assert (weights.parent / "int8_openvino.xml").is_file()
    assert (weights.parent / "int8_openvino.bin").is_file()
