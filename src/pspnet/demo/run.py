"""Running the demo: scenes, the FCN and PSPNet trained per seed, results kept, report written.

Every run trains for a fixed number of iterations with a fixed seed in fp32, so the numbers do
not depend on how fast the machine is (only the wall time does). Finished runs are appended to
``OUT/results.jsonl``; an interrupted demo skips them when restarted and resumes the unfinished
run from its checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pspnet.checkpoint import load_model
from pspnet.config import Config, ConfigError
from pspnet.data.context_scenes import CONTEXT_CLASSES, max_gap
from pspnet.data.datasets import SegmentationDataset, list_file_samples
from pspnet.data.scenes import BOAT, CAR, ScenesMismatchError, generate_scenes
from pspnet.demo.agreement import SeedAgreement
from pspnet.demo.report import FCN_REACH_PX, scene_label, write_report
from pspnet.engine.evaluate import evaluate_model, write_metrics
from pspnet.engine.train import train

__all__ = ["DEMO_MODELS", "FCN_REACH_PX", "DemoResult", "DemoSettings", "demo_model_options",
           "run_demo", "vessel_accuracy"]

#: The two rows compared: key -> (name, model options).
DEMO_MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "fcn": ("FCN (no pyramid)", {"use_ppm": False}),
    "pspnet": ("PSPNet (bins 1,2,3,6)", {"use_ppm": True, "bins": [1, 2, 3, 6]}),
}
#: Seed of the generated scenes: the same data for every training seed, so that the seeds
#: vary only the training (initialisation, data order, augmentation).
DATA_SEED = 0
#: Written into each run folder: the settings the run was trained with.
_SETTINGS_FILE = "demo_settings.json"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains. The defaults put the deciding context beyond everything the FCN
    can see (``gap`` 264 > :data:`FCN_REACH_PX` 257), so no FCN can name a vessel at any
    length, and train long enough for PSPNet to learn to (docs/receptive_field.md).

    Attributes:
        iterations: Optimizer steps per run (fixed: no time budget).
        seeds: Number of training seeds.
        seed_start: The first seed (seeds ``seed_start .. seed_start + seeds - 1``).
        size: Scene height in pixels; the scenes are also the training crops.
        scene_width: Scene width in pixels, at most ``size`` (``size``: square scenes). None:
            half of ``size`` (at least 32). A scene narrower than tall has its context band on
            the top or bottom edge, so the gap runs along the height: 448x224 scenes keep the
            448-px design (the FCN's reach matters along one axis only) at half the cost per
            step, and their vessels cover twice the share of the pixels.
        gap: Neutral band between every vessel and the context, in pixels. Beyond the FCN's
            receptive field (:data:`FCN_REACH_PX`, measured in ``tests/test_demo.py``) the
            FCN's logits on a vessel do not depend on the context at all; within it (e.g. 48
            in 128-px scenes) a longer-trained FCN learns to read the context too.
        width: Channels of the backbone's first stage (``model.base_width``; 64: ResNet-18).
            Narrower keeps the receptive field: width 16 on 448-px scenes costs about what full
            width does on 128-px ones.
        min_scale: Smallest random scale of the training scenes (the largest is 1). With a gap
            beyond the FCN's reach keep 1.0: shrinking a scene brings its context closer.
        n_train: Training scenes.
        n_val: Held-out validation scenes.
        batch_size: Images per step.
    """

    iterations: int = 120
    seeds: int = 3
    seed_start: int = 0
    size: int = 448
    scene_width: int | None = None
    gap: int = 264
    width: int = 16
    min_scale: float = 1.0
    n_train: int = 400
    n_val: int = 60
    batch_size: int = 4

    def __post_init__(self) -> None:
        for name, low in (("iterations", 1), ("seeds", 1), ("seed_start", 0), ("size", 32),
                          ("gap", 1), ("width", 1), ("n_train", 1), ("n_val", 1),
                          ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                # the CLI's flag where there is one; n_train, n_val, batch_size are API-only
                cli = name not in ("n_train", "n_val", "batch_size")
                flag = "--" + name.replace("_", "-") if cli else name
                raise ConfigError(f"demo: {flag} must be an integer >= {low}, got {v!r}")
        if isinstance(self.min_scale, bool) or not isinstance(self.min_scale, (int, float)) \
                or not 0.25 <= self.min_scale <= 1.0:
            raise ConfigError(f"demo: --min-scale must be in [0.25, 1], got {self.min_scale!r}")
        w = self.scene_width
        if w is not None and (isinstance(w, bool) or not isinstance(w, int)
                              or not 32 <= w <= self.size):
            raise ConfigError(f"demo: --scene-width must be an integer in [32, --size "
                              f"{self.size}] (the context lies along the height), got {w!r}")
        if self.gap > (top := max_gap(self.scene_size)):
            h, w = self.scene_size
            raise ConfigError(f"demo: --gap {self.gap} leaves no room for a vessel in "
                              f"{h}x{w} scenes; use --gap {top} or less, or a larger --size")

    @property
    def scene_size(self) -> tuple[int, int]:
        """(height, width) of the scenes."""
        if self.scene_width is None:
            return self.size, min(self.size, max(32, self.size // 2))
        return self.size, self.scene_width

    @property
    def scene_name(self) -> str:
        """``448`` or ``448x224``: how folder names and the report give the scene size."""
        return scene_label(self.run_settings(0))

    def run_settings(self, seed: int) -> dict[str, int | float]:
        """What one run is trained with (recorded beside it and in ``results.jsonl``)."""
        h, w = self.scene_size
        return {"iterations": self.iterations, "seed": seed, "size": h,
                # None for square scenes, as recorded before the field existed
                "scene_width": None if w == h else w, "gap": self.gap, "width": self.width,
                "min_scale": self.min_scale, "n_train": self.n_train, "n_val": self.n_val,
                "batch_size": self.batch_size}

    def seed_list(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.seeds))


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        report: ``report.html``.
        agreement: The seed-agreement check on the context classes (mean of boat and car IoU).
        line: Its one-line verdict (printed at the end of ``pspnet demo``).
    """

    report: Path
    agreement: SeedAgreement
    line: str


def vessel_accuracy(confusion: np.ndarray) -> float:
    """Of the pixels that are boat or car and predicted boat or car: the fraction named right
    (0.5 = chance; NaN when there are none)."""
    sub = np.asarray(confusion)[np.ix_([BOAT, CAR], [BOAT, CAR])].astype(np.float64)
    return float(np.trace(sub) / sub.sum()) if sub.sum() > 0 else math.nan


def _run_dir(out: Path, s: DemoSettings, model: str, seed: int) -> Path:
    name = f"{model}_{s.scene_name}px_gap{s.gap}_w{s.width}_s{seed}_{s.iterations}it"
    return out / "runs" / name


def _refuse_other_settings(work: Path, settings: dict[str, int | float]) -> None:
    """Refuse to resume a run in ``work`` trained with other settings than ``settings``.

    Raises:
        ConfigError: The earlier run's recorded settings differ or are missing.
    """
    if not (work / "checkpoints").is_dir() or not any((work / "checkpoints").iterdir()):
        return
    stamp = work / _SETTINGS_FILE
    old = json.loads(stamp.read_text()) if stamp.is_file() else None
    if old is not None:  # runs recorded before scene_width existed were square
        old = {"scene_width": None, **old}
    if old == settings:
        return
    fix = "re-run with --fresh to delete the earlier runs and train again, or use another --out"
    if old is None:
        raise ConfigError(f"{work} holds a demo run whose settings are unknown; {fix}")
    diff = ", ".join(f"{k}={old.get(k)!r}, not {v!r}" for k, v in settings.items()
                     if old.get(k) != v)
    raise ConfigError(f"{work} holds a demo run trained with other settings ({diff}); "
                      f"resuming it would keep them. To train with the new ones, {fix}")


def _load_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def demo_model_options(model: str, s: DemoSettings) -> dict[str, Any]:
    """The ``model`` section of one demo row's config (``model``: a key of DEMO_MODELS)."""
    return {"arch": "pspnet_r18", "num_classes": len(CONTEXT_CLASSES), "output_stride": 8,
            "base_width": s.width, "head_channels": 128, "aux_channels": 64,
            **DEMO_MODELS[model][1]}


def _config(data: Path, work: Path, model: str, s: DemoSettings, seed: int) -> Config:
    return Config.from_dict({
        "model": demo_model_options(model, s),
        "data": {"root": str(data), "train_list": str(data / "train.txt"),
                 "val_list": str(data / "val.txt"), "class_names": str(data / "classes.txt"),
                 "crop_size": list(s.scene_size), "scale": [s.min_scale, 1.0],
                 "rotate": [-10, 10]},
        "optim": {"lr": 0.02},
        # fp32 everywhere: bf16 on one CPU and fp32 on another would give other numbers.
        "train": {"work_dir": str(work), "max_iter": s.iterations, "batch_size": s.batch_size,
                  "seed": seed, "val_interval": 0, "resume": "auto", "precision": "fp32",
                  "checkpoint_minutes": 2.0},
    })  # fmt: skip


def _train_one(data: Path, val: SegmentationDataset, work: Path, model: str, s: DemoSettings,
               seed: int, progress: bool) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it; its ``results.jsonl`` record."""
    settings = s.run_settings(seed)
    work.mkdir(parents=True, exist_ok=True)
    (work / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    result = train(_config(data, work, model, s, seed), progress=progress)
    metrics = evaluate_model(load_model(result.final_dir), val, num_classes=len(CONTEXT_CLASSES),
                             progress=False)
    write_metrics(work / "val_metrics.json", metrics, CONTEXT_CLASSES)
    vessel = vessel_accuracy(metrics.confusion)
    return {"model": model, **settings, "iterations_done": result.iterations,
            "train_s": round(result.elapsed_s, 1),
            # relative to OUT, so that a moved output folder is still resumed
            "weights": result.final_dir.relative_to(work.parents[1]).as_posix(),
            "vessel_acc": None if math.isnan(vessel) else vessel,  # null in JSON, like IoU
            "metrics": metrics.to_dict(CONTEXT_CLASSES, include_confusion=True)}


def _prepare(out: Path, s: DemoSettings, fresh: bool, progress: bool) -> Path:
    """Check (or with ``fresh`` delete) the earlier runs, then generate the scenes."""
    for seed in s.seed_list():
        for model in DEMO_MODELS:
            work = _run_dir(out, s, model, seed)
            if fresh and work.is_dir():
                shutil.rmtree(work)
            elif not fresh:
                _refuse_other_settings(work, s.run_settings(seed))
    scenes = out / f"context_{s.scene_name}_gap{s.gap}"
    try:
        return generate_scenes(scenes, n_train=s.n_train, n_val=s.n_val, seed=DATA_SEED,
                               size=s.scene_size, progress=progress, overwrite=fresh,
                               mode="context", gap=s.gap)
    except ScenesMismatchError:
        raise FileExistsError(
            f"{scenes} holds scenes generated with other parameters (other numbers of scenes?); "
            "re-run with --fresh to generate them again, or use another --out"
        ) from None


def _say_next(progress: bool, k: int, total: int, model: str, seed: int, s: DemoSettings,
              times: list[float], todo: int) -> None:
    """``run 3/6: PSPNet ... seed 1, 90 iterations; about 6 min left`` (the ETA from the runs
    so far)."""
    if not progress:
        return
    eta = f"; about {math.ceil(sum(times) / len(times) * todo / 60)} min left" if times else ""
    print(f"run {k}/{total}: {DEMO_MODELS[model][0]}, seed {seed}, {s.iterations} iterations"
          f"{eta}", flush=True)


def run_demo(out: str | Path, settings: DemoSettings | None = None, *, fresh: bool = False,
             progress: bool = True) -> DemoResult:
    """Generate the context scenes, train the FCN and PSPNet per seed, evaluate, report.

    Re-running with the same settings skips the runs already recorded in ``OUT/results.jsonl``
    and resumes an interrupted one from its checkpoints.

    Args:
        out: Output folder (scenes, runs, ``results.jsonl``, report).
        settings: What to train (:class:`DemoSettings`; None: the defaults).
        fresh: Delete the earlier runs of these settings and seeds (and regenerate scenes made
            with other parameters), then train again.
        progress: Show which run of how many, the iterations and an estimate of the time left.

    Returns:
        The report's path and the seed-agreement check.

    Raises:
        ConfigError: Invalid settings, or ``out`` holds a run trained with other settings and
            ``fresh`` is False.
        FileExistsError: ``out`` holds scenes generated with other parameters and ``fresh`` is
            False.
    """
    out, s = Path(out), settings or DemoSettings()
    data = _prepare(out, s, fresh, progress)
    val = SegmentationDataset(list_file_samples(data, data / "val.txt"), len(CONTEXT_CLASSES))
    results_file = out / "results.jsonl"
    kept = _load_results(results_file)
    if fresh:  # drop the records of the runs just deleted
        mine = [{**s.run_settings(seed), "model": m} for seed in s.seed_list() for m in DEMO_MODELS]
        kept = [r for r in kept if {k: r.get(k) for k in mine[0]} not in mine]
        out.mkdir(parents=True, exist_ok=True)
        results_file.write_text("".join(json.dumps(r) + "\n" for r in kept))
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for r in kept:
        if {k: r.get(k) for k in s.run_settings(0)} == s.run_settings(r["seed"]) \
                and (out / r["weights"]).is_dir():
            runs[(r["model"], r["seed"])] = r
    plan = [(m, seed) for seed in s.seed_list() for m in DEMO_MODELS]  # seed-major: pairs first
    todo = [key for key in plan if key not in runs]
    times: list[float] = []
    for k, (model, seed) in enumerate(plan, 1):
        if (model, seed) in runs:
            continue
        _say_next(progress, k, len(plan), model, seed, s, times, len(todo) - len(times))
        t0 = time.perf_counter()
        rec = _train_one(data, val, _run_dir(out, s, model, seed), model, s, seed, progress)
        times.append(time.perf_counter() - t0)
        with results_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        runs[(model, seed)] = rec
    ordered = [[runs[(m, seed)] for seed in s.seed_list()] for m in DEMO_MODELS]
    report, agreement = write_report(out, data, ordered, asdict(s))
    return DemoResult(report, agreement, agreement.line())
