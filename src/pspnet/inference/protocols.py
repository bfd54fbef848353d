"""The evaluation presets: :class:`InferenceOptions` named after their source, with their docs.

``semseg`` / ``semseg-ms`` reproduce the authors' test script (hszhao/semseg ``tool/test.py``),
``mmseg-whole`` / ``mmseg-slide`` (and ``-ms``) mmsegmentation's ``whole`` and ``slide`` test
modes. :data:`DATASET_SETTINGS` holds the sizes each source publishes per data set.
"""

from __future__ import annotations

from typing import Any

from pspnet.inference.options import MULTI_SCALES, InferenceOptions

__all__ = ["PROTOCOLS", "DATASET_SETTINGS", "get_protocol", "dataset_sizes"]

_SEMSEG_DOC = (
    "hszhao/semseg tool/test.py. For each scale s the image is resized so its LONG side is "
    "round(base_size * s), keeping the aspect ratio (bilinear). It is padded to at least "
    "crop x crop with the mean colour, int(pad/2) before and the rest after, and tiled with "
    "stride ceil(2/3 crop), the last tile flush with the border. Every tile is ALWAYS run "
    "together with its horizontal mirror; the softmax of the two (mirror flipped back) is "
    "averaged, then averaged over overlapping tiles with a count map. The padding is cropped, "
    "the probabilities are resized bilinearly (cv2 convention, align_corners=False) to the "
    "original size and averaged over scales; the prediction is their argmax. Model outputs "
    "smaller than a tile are upsampled with align_corners=True. Sizes: base_size 512 / crop 473 "
    "for ADE20K and VOC2012, base_size 2048 / crop 713 for Cityscapes."
)

_MMSEG_WHOLE_DOC = (
    "mmsegmentation EncoderDecoder.whole_inference (test_cfg mode='whole'). The image, resized "
    "by the dataset pipeline (keep-ratio Resize to img_scale, e.g. (2048, 512) for ADE20K/VOC, "
    "(2048, 1024) for Cityscapes) or, with img_scale None, used as given, goes through the "
    "network whole; the logits are resized (model align_corners, False for mmseg's PSPNet) to "
    "the original size and soft-maxed."
)

_MMSEG_SLIDE_DOC = (
    "mmsegmentation EncoderDecoder.slide_inference (test_cfg mode='slide', used for its "
    "769x769 Cityscapes models: crop (769, 769), stride (513, 513), align_corners=True). Tiles "
    "step by the stride with the last one flush with the border; logits are summed and divided "
    "by the count map; the averaged logits are resized to the original size and soft-maxed. An "
    "image smaller than the crop is NOT padded: it runs as one smaller tile (mmseg's "
    "documented behaviour), pad_mode='none'; use .replace(pad_mode='bottom_right') for "
    "zero (mean) padding at the bottom/right instead."
)

#: The single-scale mmseg presets; the ``-ms`` ones end with :data:`_MS_DOC` instead.
_ONE_VIEW_DOC = " No flip, one scale."

_MS_DOC = (
    " Multi-scale variant: scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with horizontal flip, "
    "softmax probabilities averaged over every (scale, flip) view."
)


_SEMSEG = InferenceOptions(
    name="semseg",
    source="hszhao/semseg tool/test.py (test, scale_process, net_process)",
    mode="slide",
    scales=(1.0,),
    flip=True,
    flip_mode="crop",
    pad_mode="center",
    average="prob",
    align_corners=True,
    restore_align_corners=False,
    description=_SEMSEG_DOC,
)

_MMSEG_WHOLE = InferenceOptions(
    name="mmseg-whole",
    source="open-mmlab/mmsegmentation mmseg/models/segmentors/encoder_decoder.py",
    mode="whole",
    average="logit",
    align_corners=False,
    restore_align_corners=False,
    description=_MMSEG_WHOLE_DOC + _ONE_VIEW_DOC,
)

_MMSEG_SLIDE = InferenceOptions(
    name="mmseg-slide",
    source="open-mmlab/mmsegmentation mmseg/models/segmentors/encoder_decoder.py",
    mode="slide",
    pad_mode="none",
    average="logit",
    align_corners=True,
    restore_align_corners=True,
    description=_MMSEG_SLIDE_DOC + _ONE_VIEW_DOC,
)


def _mmseg_ms(single: InferenceOptions, doc: str) -> InferenceOptions:
    """mmseg's multi-scale variant of a single-scale preset (aug_test: every scale, flipped)."""
    return single.replace(
        name=f"{single.name}-ms",
        source="mmsegmentation encoder_decoder.py aug_test / MultiScaleFlipAug",
        scales=MULTI_SCALES,
        flip=True,
        flip_mode="image",
        description=doc + _MS_DOC,
    )


#: Evaluation presets named after their source. ``"<name>"`` is single-scale (scale 1.0 only;
#: for ``semseg`` that still includes the flip the script always does), ``"<name>-ms"`` adds
#: the scales in :data:`MULTI_SCALES` (and flip, for mmseg).
PROTOCOLS: dict[str, InferenceOptions] = {
    "semseg": _SEMSEG,
    "semseg-ms": _SEMSEG.replace(
        name="semseg-ms",
        source="hszhao/semseg tool/test.py with scales [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]",
        scales=MULTI_SCALES,
        description=_SEMSEG_DOC + " Multi-scale: scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).",
    ),
    "mmseg-whole": _MMSEG_WHOLE,
    "mmseg-whole-ms": _mmseg_ms(_MMSEG_WHOLE, _MMSEG_WHOLE_DOC),
    "mmseg-slide": _MMSEG_SLIDE,
    "mmseg-slide-ms": _mmseg_ms(_MMSEG_SLIDE, _MMSEG_SLIDE_DOC),
}

#: Published sizes per protocol family and data set, applied by
#: :meth:`InferenceOptions.for_dataset`.
DATASET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # hszhao/semseg config/*/*_pspnet50.yaml: base_size, test_h/test_w.
    "semseg": {
        "ade20k": {"base_size": 512, "crop_size": (473, 473)},
        "voc2012": {"base_size": 512, "crop_size": (473, 473)},
        "cityscapes": {"base_size": 2048, "crop_size": (713, 713)},
    },
    # mmseg configs/_base_/datasets/*.py test pipeline Resize(scale=..., keep_ratio=True).
    "mmseg-whole": {
        "ade20k": {"img_scale": (2048, 512)},
        "voc2012": {"img_scale": (2048, 512)},
        "cityscapes": {"img_scale": (2048, 1024)},
    },
    # mmseg configs/pspnet/*_769x769_*.py test_cfg.
    "mmseg-slide": {
        "cityscapes": {"img_scale": (2049, 1025), "crop_size": (769, 769), "stride": (513, 513)},
    },
}

_DATASET_ALIASES = {
    "ade": "ade20k",
    "ade20k": "ade20k",
    "voc": "voc2012",
    "voc2012": "voc2012",
    "pascal_voc": "voc2012",
    "cityscapes": "cityscapes",
}


def dataset_sizes(name: str, dataset: str) -> dict[str, Any]:
    """The published sizes of preset ``name``'s source for ``dataset``.

    Raises:
        ValueError: The source has no published setting for that data set.
    """
    family = name.removesuffix("-ms")
    table = DATASET_SETTINGS.get(family, {})
    key = _DATASET_ALIASES.get(dataset.lower(), dataset.lower())
    if key not in table:
        raise ValueError(
            f"protocol {name!r} has no setting for data set {dataset!r}; "
            f"known: {sorted(table)} (or set sizes with .replace(...))"
        )
    return table[key]


def get_protocol(name: str, dataset: str | None = None, **overrides: Any) -> InferenceOptions:
    """Look up a preset, optionally fill its data-set sizes, then apply overrides.

    Args:
        name: A key of :data:`PROTOCOLS`.
        dataset: ``"ade20k"``, ``"voc2012"`` or ``"cityscapes"`` (see :data:`DATASET_SETTINGS`).
        **overrides: Field changes, e.g. ``crop_size=(713, 713)``.

    Raises:
        ValueError: Unknown protocol or data set.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    if dataset is not None:
        proto = proto.for_dataset(dataset)
    return proto.replace(**overrides) if overrides else proto
