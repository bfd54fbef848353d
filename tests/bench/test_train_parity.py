"""bench/train_parity.py: three tiny training runs, their comparison, resuming and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_bench_script
import torch
from PIL import Image



@pytest.fixture(scope="module")
def tp_mod():
    yield from load_bench_script("train_parity.py", "bench_train_parity")


def test_moving_average_and_log_reading(tp_mod, tmp_path):
    assert tp_mod.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert tp_mod.moving_average([2.0, 4.0], 5) == [2.0, 3.0]
    log = tmp_path / "log.jsonl"
    events = [{"event": "start", "precision": "bf16"},
              *({"event": "train", "iter": i, "loss": 10.0 - i, "sec_per_iter": 0.5}
                for i in (1, 2, 3)),
              {"event": "resume", "precision": "bf16"},  # step 3 redone after a resume
              {"event": "train", "iter": 3, "loss": 6.5, "sec_per_iter": 0.7},
              {"event": "end", "iteration": 3}]
    log.write_text("\n".join(json.dumps(e) for e in events) + '\n{"event": "tra')  # torn line
    r = tp_mod.read_run_log(log)
    assert r.losses == {1: 9.0, 2: 8.0, 3: 6.5} and r.sec_per_iter[3] == 0.7
    assert r.precision == "bf16" and r.finished_at == 3
    assert tp_mod.read_run_log(tmp_path / "missing.jsonl").finished_at is None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:train.precision is bf16 but this CPU has no native bf16")
def test_three_runs_compared_resumed_and_reported(tp_mod, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tp_mod, "git_commit", lambda *_: "abc1234")
    before = torch.get_num_threads()
    work, out = tmp_path / "work", tmp_path / "docs" / "train_parity"
    tiny = ["--steps", "3", "--size", "32", "--batch-size", "2", "--n-train", "2",
            "--window", "2", "--output-stride", "32", "--head-channels", "16",
            "--aux-channels", "16", "--workers", "0", "--threads", "1", "-q",
            "--work-dir", str(work), "--out", str(out)]  # fmt: skip
    try:
        assert tp_mod.main(tiny) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    doc = json.loads(Path(f"{out}.json").read_text())
    res = doc["result"]
    assert list(res["runs"]) == ["fp32_s0", "fp32_s1", "fast_s0"]
    assert [res["runs"][r]["precision"] for r in res["runs"]] == ["fp32", "fp32", "bf16"]
    assert [res["runs"][r]["channels_last"] for r in res["runs"]] == [False, False, True]
    assert all(len(c) == 3 for c in res["smoothed"].values())
    for run in res["runs"].values():
        assert run["final_smoothed_loss"] > 0 and run["sec_per_step"] > 0
    assert res["runs"]["fp32_s0"]["mad_vs_fp32_s0"] == 0
    assert res["mad_fast"] == res["runs"]["fast_s0"]["mad_vs_fp32_s0"] >= 0
    assert res["within_noise"] == (res["mad_fast"] <= res["mad_seed"])
    # Same seed, same init: the fast path's first loss is fp32's up to bf16 rounding; another
    # seed starts elsewhere.
    first = {r: x["first_loss"] for r, x in res["runs"].items()}
    assert abs(first["fast_s0"] - first["fp32_s0"]) < 0.1
    # Every per-step loss came from the runs' logs.
    for run in res["runs"]:
        log = (work / "runs" / run / "log.jsonl").read_text()
        assert sum('"event": "train"' in line for line in log.splitlines()) == 3
    md = Path(f"{out}.md").read_text()
    assert res["verdict"] in md and "abc1234" in md and "python bench/train_parity.py" in md
    assert f"({out.name}.png)" in md and "`fast_s0`" in md
    with Image.open(f"{out}.png") as im:
        assert im.width > 200 and im.height > 100

    # A second call trains nothing and gives the same result.
    logs_before = {r: (work / "runs" / r / "log.jsonl").read_text() for r in res["runs"]}
    capsys.readouterr()
    assert tp_mod.main(tiny) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3
    assert {r: (work / "runs" / r / "log.jsonl").read_text() for r in res["runs"]} == logs_before
    assert json.loads(Path(f"{out}.json").read_text())["result"]["mad_fast"] == res["mad_fast"]

    # The same work dir refuses another setup instead of mixing runs.
    other = [t if t != "3" else "4" for t in tiny]
    assert tp_mod.main(other) == 2
    assert "different setup" in capsys.readouterr().err


def test_bad_flags_are_named(tp_mod, tmp_path, capsys):
    assert tp_mod.main(["--steps", "1", "--work-dir", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert tp_mod.main(["--n-train", "4", "--batch-size", "8", "--work-dir", str(tmp_path)]) == 2
    assert "--n-train" in capsys.readouterr().err
