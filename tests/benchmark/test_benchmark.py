"""The benchmark runs end to end on a tiny case and reports every column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_torch_thread

from pspnet import benchmark as bench


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def test_tiny_benchmark_reports_speedups_and_writes_files(tmp_path: Path) -> None:
    doc = bench.run_benchmark(arch="pspnet_r18", sizes=(64,), variants=("fp32-eager", "fp32-folded"),
                              sliding=False, train=False, cpu_archs=False, num_classes=3,
                              warmup=1, repeats=2, gemm_size=512, progress=None, data=False)
    assert doc["peaks"]["fp32"] > 0 and doc["peaks"]["bf16"] > 0
    rows = doc["results"]
    assert [r["variant"] for r in rows] == ["fp32-eager", "fp32-folded"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["gflop"] > 0
    assert all(r["ms"] > 0 and 0 < r["peak_fraction"] for r in rows)
    bench.save(doc, tmp_path / "b.json", tmp_path / "b.md")
    assert "| pspnet_r18 inference 64x64 b1 | fp32-folded |" in (tmp_path / "b.md").read_text()


def test_labels_rows_time_predict_labels_after_the_logits_rows(monkeypatch) -> None:
    import pspnet.benchmark.timing as timing

    calls: list[str] = []
    real = timing.predict_labels

    def spy(model, images, *a, **k):  # noqa: ANN001, ANN202
        calls.append(type(model).__name__)
        return real(model, images, *a, **k)

    monkeypatch.setattr(timing, "predict_labels", spy)
    doc = bench.run_benchmark(arch="pspnet_r18", sizes=(64,), variants=("fp32-eager", "fp32-folded"),
                              sliding=False, train=False, cpu_archs=False, num_classes=3,
                              warmup=0, repeats=2, gemm_size=256, progress=None, data=False,
                              labels=True)
    rows = [(r["case"], r["variant"]) for r in doc["results"]]
    assert rows == [("pspnet_r18 inference 64x64 b1", "fp32-eager"),
                    ("pspnet_r18 inference 64x64 b1", "fp32-folded"),
                    ("pspnet_r18 labels 64x64 b1", "fp32-eager"),
                    ("pspnet_r18 labels 64x64 b1", "fp32-folded")]
    assert calls == ["PSPNet"] * 2 + ["InferenceModel"] * 2  # two timed runs of each
    labels = doc["results"][2:]
    assert labels[0]["speedup"] == 1.0 and labels[1]["speedup"] == pytest.approx(
        labels[0]["ms"] / labels[1]["ms"])


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
                              warmup=0, repeats=1, gemm_size=256, progress=said.append,
                              data=False)
    assert [r["variant"] for r in doc["results"]] == ["fp32-eager"]
    assert any("no native bf16" in s for s in said) and doc["machine"]["native_bf16"] is False


def test_data_pipeline_case_on_tiny_scenes(tmp_path: Path, monkeypatch) -> None:
    # No CamVid where the environment points: "auto" falls back to generated scenes.
    monkeypatch.setenv("PSPNET_CAMVID", str(tmp_path / "no_camvid"))
    doc = bench.run_benchmark(
        arch="pspnet_r18", sizes=(), sliding=False, train=False, cpu_archs=False,
        gemm_size=256, progress=None, data=True,
        data_options={"scenes_size": 32, "batch": 2, "batches": 2, "warmup_batches": 1,
                      "workers": (0, 1), "scenes_dir": tmp_path / "scenes", "step_repeats": 1,
                      "step_model": {"arch": "pspnet_r18", "head_channels": 16,
                                     "aux_channels": 16, "ppm_channels": 8}},
    )
    p = doc["data_pipeline"]
    assert p["source"] == "scenes" and p["crop"] == [32, 32] and p["batch"] == 2
    assert p["images"] >= 6  # (2 timed + 1 warm-up batches) x 2 images, generated once
    assert [s["workers"] for s in p["loader"]] == [0, 1]
    assert all(s["images_per_s"] > 0 and s["ms_per_batch"] > 0 and s["first_batch_s"] > 0
               for s in p["loader"])
    assert p["train_step"]["images_per_s"] > 0 and p["train_step"]["ms"] > 0
    assert 0 < p["loader"][0]["step_share"] < 1 and p["loader"][0]["keeps_up"] is None
    assert isinstance(p["loader"][1]["keeps_up"], bool)
    assert ("never starves" in p["verdict"]) == p["loader"][1]["keeps_up"]
    variants = [r["variant"] for r in doc["results"]]
    assert variants[:2] == ["loader 0 workers", "loader 1 worker"] and "fp32-eager" in variants
    assert all(r["extra"]["images_per_s"] > 0 for r in doc["results"])
    bench.save(doc, tmp_path / "b.json", tmp_path / "b.md")
    md = (tmp_path / "b.md").read_text()
    assert "| workers | images/s |" in md and p["verdict"] in md
    assert "loader 0 workers" not in md  # loader rows only in their own table
    assert json.loads((tmp_path / "b.json").read_text())["data_pipeline"]["verdict"] == p["verdict"]


def test_data_pipeline_camvid_missing_names_the_flag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PSPNET_CAMVID", str(tmp_path / "no_camvid"))
    with pytest.raises(ValueError, match="--data-source camvid.*PSPNET_CAMVID"):
        bench.bench_data_pipeline(source="camvid")
    with pytest.raises(ValueError, match="--data-source"):
        bench.bench_data_pipeline(source="imagenet")


def test_benchmark_cli_passes_the_data_flags(monkeypatch) -> None:
    from pspnet.cli import build_parser

    seen: dict = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda **kw: seen.update(kw) or {})
    monkeypatch.setattr(bench, "save", lambda *a: None)
    args = build_parser().parse_args(["benchmark", "--data-source", "scenes"])
    assert args.func(args) == 0
    assert seen["data"] is True and seen["data_options"] == {"source": "scenes"}
    args = build_parser().parse_args(["benchmark", "--no-data"])
    assert args.func(args) == 0 and seen["data"] is False
    # --no-data with a data flag would ignore it: refused (tests/reliability/test_options.py)
    args = build_parser().parse_args(["benchmark", "--no-data", "--data-source", "scenes"])
    with pytest.raises(ValueError, match="--no-data"):
        args.func(args)
    args = build_parser().parse_args(["benchmark"])
    args.func(args)
    assert seen["data"] is True and seen["data_options"] == {"source": "auto"}
    assert seen["sizes"] == (473, 713)
    # The data case alone: a bare --sizes and the other cases off.
    args = build_parser().parse_args(["benchmark", "--sizes", "--no-sliding", "--no-train",
                                      "--no-cpu-archs"])
    args.func(args)
    assert seen["sizes"] == () and seen["data"] is True and not seen["train"]


def test_benchmark_device_flag_reaches_run_benchmark(monkeypatch) -> None:
    from pspnet.cli import build_parser

    seen: dict = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda **kw: seen.update(kw) or {})
    monkeypatch.setattr(bench, "save", lambda *a: None)
    args = build_parser().parse_args(["benchmark"])
    args.func(args)
    assert seen["device"] == "cpu"
    args = build_parser().parse_args(["benchmark", "--device", "cuda:0"])
    args.func(args)
    assert seen["device"] == "cuda:0" and seen["labels"] is False
    args = build_parser().parse_args(["benchmark", "--labels"])
    args.func(args)
    assert seen["labels"] is True
    # --labels with no inference case would be ignored: refused, naming both flags.
    args = build_parser().parse_args(["benchmark", "--labels", "--sizes"])
    with pytest.raises(ValueError, match="--labels.*--sizes"):
        args.func(args)


def test_cuda_benchmark_without_cuda_names_the_device(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda'.*--device cpu"):
        bench.run_benchmark(device="cuda", sizes=(48,), progress=None)


def test_gemm_peak_on_a_named_device() -> None:
    import torch

    assert bench.matmul_peak(torch.float32, 64, repeats=1, device="cpu") > 0
    try:
        int8 = bench.matmul_peak(torch.int8, 64, repeats=1, device="cpu")
    except RuntimeError:  # a build without a CPU int8 matmul
        return
    assert int8 > 0


def test_markdown_of_a_cuda_run_names_the_gpu_and_keeps_small_times() -> None:
    # The shape of _run_cuda's document; the times are an H200's (milliseconds, not seconds).
    row = {"case": "pspnet50 inference 473x473 b1", "variant": "bf16-compile", "ms": 2.304,
           "ms_min": 2.25, "ms_max": 12.38, "speedup": 2.11, "gflops": 140952.0,
           "peak_fraction": 0.214, "peak_rss_mib": 1853.0,
           "extra": {"compile_s": 6.9, "gpu_peak_mib": 795}}
    doc = {"machine": {"cpu": "Some Xeon", "threads": 16, "torch": "2.11.0+cu130",
                       "cpu_capability": "AVX512", "native_bf16": True, "date": "2026-12-04",
                       "device": "NVIDIA H200", "fp32_as_tf32": True},
           "peaks": {"fp32": 371126.0, "bf16": 658930.0, "fp16": 680839.0}, "results": [row]}
    md = bench.format_markdown(doc)
    assert md.startswith("Device: NVIDIA H200 (host: Some Xeon, 16 threads)")
    assert "fp16 680839 GFLOP/s (fp32 as TF32" in md
    assert "| bf16-compile | 2.30 | 2.25-12.4 | 2.11x |" in md
    # the device's peak in the memory column (not the host's RSS), not repeated in the notes
    assert "GPU peak MiB" in md and "| 21% | 795 | compile_s 6.9 |" in md
    cpu_doc = {**doc, "machine": {k: v for k, v in doc["machine"].items()
                                  if k not in ("device", "fp32_as_tf32")},
               "results": [{**row, "ms": 1182.4, "ms_min": 1100.2, "ms_max": 1300.0}]}
    md = bench.format_markdown(cpu_doc)
    assert md.startswith("Machine: Some Xeon, 16 threads") and "TF32" not in md
    assert "| 1182 | 1100-1300 |" in md and "peak RSS MiB" in md and "| 1853 |" in md


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cases_count_each_variants_own_device_memory() -> None:
    """Each case holds its own weights and activations only: the fp16 copy needs less device
    memory than the fp32 one, and a case's peak does not grow with the cases before it."""
    from pspnet.benchmark.timing import bench_inference

    rows = bench_inference("pspnet_r18", 129, ("fp32-folded", "fp16-folded", "fp32-folded"),
                           num_classes=11, warmup=1, repeats=1,
                           peaks={"fp32": 1.0, "bf16": 1.0}, device="cuda")
    peak = {i: r.extra["gpu_peak_mib"] for i, r in enumerate(rows)}
    assert all(v > 0 for v in peak.values()), peak
    # fp16 below fp32; the same variant twice alike (a cuDNN workspace may differ a little)
    assert peak[2] < peak[1] and abs(peak[3] - peak[1]) <= 0.1 * peak[1], peak


def test_int8_rows_are_held_to_the_int8_gemm_peak(monkeypatch) -> None:
    import torch

    from pspnet.benchmark import timing

    rates = {torch.int8: 800.0, torch.float32: 200.0}

    def rate(dtype, n, repeats=5):
        if rates[dtype] is None:
            raise RuntimeError("no int8 matmul on cpu")
        return rates[dtype]

    monkeypatch.setattr(bench, "matmul_peak", rate)
    monkeypatch.setattr(timing, "matmul_peak", rate)  # the small probe of int8_gemm_is_fast
    conv = {"rate": 0.0}  # oneDNN's int8 convolution: absent first
    monkeypatch.setattr(bench, "int8_conv_peak", lambda n: conv["rate"])
    assert bench.int8_gemm_is_fast() and bench.int8_peak(64, 200.0) == 800.0
    conv["rate"] = 1600.0  # AMX-INT8: the convolution twice _int_mm's rate is the peak
    assert bench.int8_peak(64, 200.0) == 1600.0
    conv["rate"] = 0.0
    rates[torch.int8] = None
    assert not bench.int8_gemm_is_fast()
    assert bench.int8_peak(64, 200.0) == 200.0  # the fp32 rate where this build has none
    rates[torch.int8] = 0.3  # a fallback kernel slower than fp32 is not the int8 peak
    assert not bench.int8_gemm_is_fast() and bench.int8_peak(64, 200.0) == 200.0
    conv["rate"] = 500.0  # ... but the convolution still is, where it beats fp32
    assert bench.int8_peak(64, 200.0) == 500.0


def test_int8_conv_peak_is_a_rate_where_onednn_is_built_in() -> None:
    """The real kernel at a tiny size: a positive rate, and the quantized engine left as it was."""
    import torch

    from pspnet.benchmark import timing

    before = torch.backends.quantized.engine
    rate = timing.int8_conv_peak(64, repeats=1)
    assert torch.backends.quantized.engine == before
    if not {"onednn", "x86"} & set(torch.backends.quantized.supported_engines):
        assert rate == 0.0
    else:
        assert rate > 0


def test_cpu_gemm_peak_is_not_held_to_a_slow_matmul(monkeypatch) -> None:
    """The CPU's float peak is also measured as a 1x1 convolution (oneDNN, as the network runs):
    on AMD CPUs MKL's ``a @ b`` is the slower kernel, and a peak taken from it alone put the
    network above 100 % of it."""
    import time

    import torch

    real = torch.matmul

    def slow_matmul(a, b):
        time.sleep(0.05)
        return real(a, b)

    monkeypatch.setattr(torch, "matmul", slow_matmul)
    n = 256
    matmul_bound = 2 * n**3 / 0.05 / 1e9  # the most the slowed matmul can reach, GFLOP/s
    assert bench.matmul_peak(torch.float32, n, repeats=1, device="cpu") > 2 * matmul_bound
