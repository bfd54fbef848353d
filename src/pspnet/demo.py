"""The embedded demo: generated "scenes" where context decides, a model, overlays a person opens.

Interim version (until the training engine lands): it generates the scenes data set and runs
an untrained PSPNet over the validation images, writing palette masks and overlays, so every
stage of the pipeline (generation, preprocessing, inference, palette PNGs, overlays) is
exercised end to end. The report says plainly that the model is untrained.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.data.scenes import SCENES_CLASSES, SCENES_PALETTE, generate_scenes
from pspnet.engine.predict import PredictOptions, predict_files
from pspnet.models import create_model

__all__ = ["run_demo"]


def run_demo(out: str | Path, *, minutes: float = 3.0, seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into ``out`` and return the path of its HTML report."""
    out = Path(out)
    data = generate_scenes(out / "scenes", n_train=200, n_val=8, seed=seed, progress=progress)
    torch.manual_seed(seed)
    model = create_model("pspnet_r18", len(SCENES_CLASSES), head_channels=128)
    meta = WeightsMeta(model.config, classes=SCENES_CLASSES,
                       palette=tuple(tuple(int(v) for v in c) for c in SCENES_PALETTE),
                       source="demo (untrained)")
    weights = save_weights(model, out / "models" / "pspnet_untrained", meta)
    images = sorted((data / "images" / "val").glob("*.png"))
    model.eval()
    summary = predict_files(model, images, out / "predictions", preprocess=meta.preprocess,
                            opts=PredictOptions(), class_names=SCENES_CLASSES,
                            palette=SCENES_PALETTE, num_classes=len(SCENES_CLASSES),
                            progress=progress)
    rows = "\n".join(
        f'<tr><td><img src="{html.escape(Path(r["overlay"]).relative_to(out).as_posix())}"></td></tr>'
        for r in summary.written
    )
    report = out / "report.html"
    report.write_text(
        "<html><body><h1>pspnet demo (interim: untrained model)</h1>"
        f"<p>Data: {html.escape(str(data))}. Weights: {html.escape(str(weights))}. "
        "Training is not wired into the demo yet, so these masks are noise by design.</p>"
        f"<table>{rows}</table></body></html>\n"
    )
    return report
