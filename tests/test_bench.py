"""The benchmark runs end to end on a tiny case and reports every column."""

from __future__ import annotations

from pathlib import Path

from pspnet import bench


def test_tiny_benchmark_reports_speedups_and_writes_files(tmp_path: Path) -> None:
    doc = bench.run_benchmark(arch="pspnet_r18", sizes=(64,), variants=("fp32-eager", "fp32-folded"),
                              sliding=False, train=False, cpu_archs=False, num_classes=3,
                              warmup=1, repeats=2, gemm_size=512, progress=None)
    assert doc["peaks"]["fp32"] > 0 and doc["peaks"]["bf16"] > 0
    rows = doc["results"]
    assert [r["variant"] for r in rows] == ["fp32-eager", "fp32-folded"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["gflop"] > 0
    assert all(r["ms"] > 0 and 0 < r["peak_fraction"] for r in rows)
    bench.save(doc, tmp_path / "b.json", tmp_path / "b.md")
    assert "| pspnet_r18 inference 64x64 b1 | fp32-folded |" in (tmp_path / "b.md").read_text()


def test_flop_count_of_a_conv() -> None:
    import torch

    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(1, 3, 10, 10)
    assert bench.count_flops(lambda: conv(x)) == 2 * 3 * 8 * 9 * 100


def test_bf16_is_skipped_where_it_would_be_emulated(monkeypatch) -> None:
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: False)
    said: list[str] = []
    doc = bench.run_benchmark(arch="pspnet_r18", sizes=(48,), variants=("fp32-eager", "bf16-folded"),
                              sliding=False, train=False, cpu_archs=False, num_classes=3,
                              warmup=0, repeats=1, gemm_size=256, progress=said.append)
    assert [r["variant"] for r in doc["results"]] == ["fp32-eager"]
    assert any("no native bf16" in s for s in said) and doc["machine"]["native_bf16"] is False
