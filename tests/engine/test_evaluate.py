"""evaluate_model: metrics equal a recomputation from the saved prediction PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _engine_tiny import NUM_CLASSES, make_tiny_dataset
from pspnet.data.datasets import SegmentationDataset, list_file_samples
from pspnet.data.transforms import eval_transform
from pspnet.engine.evaluate import evaluate_model, write_metrics
from pspnet.engine.metrics import ConfusionMatrix
from pspnet.models import create_model


def test_metrics_equal_recomputation_from_pngs(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", n_train=1, n_val=4, size=(36, 44))
    samples = list_file_samples(data["root"], data["val"])
    ds = SegmentationDataset(samples, NUM_CLASSES, transform=eval_transform())
    torch.manual_seed(0)
    model = create_model("pspnet_r18", NUM_CLASSES, head_channels=16, aux_channels=8,
                         ppm_channels=8)  # fmt: skip
    with torch.no_grad():  # make the untrained model predict several classes
        model.head.classifier.bias.copy_(torch.tensor([0.0, 0.02, -0.02]))
    out = tmp_path / "out" / "predictions"
    metrics = evaluate_model(model, ds, num_classes=NUM_CLASSES, save_predictions_dir=out,
                             progress=False)  # fmt: skip
    assert model.training  # restored

    cm = ConfusionMatrix(NUM_CLASSES)
    for s in samples:
        png = Image.open(out / f"{Path(s.image).stem}.png")
        assert png.mode == "P"
        pred = np.asarray(png)
        label = np.asarray(Image.open(s.label))
        assert pred.shape == label.shape == (36, 44)  # original size
        cm.update(pred.astype(np.int64), label.astype(np.int64))
    again = cm.compute()
    assert np.array_equal(again.confusion, metrics.confusion)
    assert again.miou == metrics.miou and again.all_acc == metrics.all_acc
    assert metrics.confusion.sum() == sum(
        int((np.asarray(Image.open(s.label)) != 255).sum()) for s in samples
    )

    # A raw dataset (no transform) is normalised inside: the same result.
    raw = SegmentationDataset(samples, NUM_CLASSES)
    again2 = evaluate_model(model, raw, num_classes=NUM_CLASSES, progress=False)
    assert np.array_equal(again2.confusion, metrics.confusion)

    doc = write_metrics(tmp_path / "out" / "metrics.json", metrics, ["bg", "red", "blue"])
    assert '"mIoU"' in doc.read_text() and '"red"' in doc.read_text()
