"""The training Config: defaults, validation naming the dotted key, precedence, recipe files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pspnet.config import Config, ConfigError
from pspnet.engine.run_config import build_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

PAPER = {
    "ade20k": (150, 473, 100),
    "voc2012": (21, 473, 50),
    "cityscapes": (19, 713, 200),
}


def test_cpu_defaults() -> None:
    cfg = Config.from_dict({"model": {"num_classes": 11}})
    assert cfg.model.arch == "pspnet_r18" and cfg.model.output_stride == 8
    assert cfg.model.head_channels == 256
    assert cfg.train.batch_size == 8 and cfg.train.precision == "auto"
    assert cfg.train.channels_last and cfg.train.aux_weight == 0.4
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.power) == (
        0.01, 0.9, 1e-4, 0.9)
    assert cfg.optim.head_lr_mult == 10.0 and cfg.data.ignore_index == 255
    # The paper's architectures get the paper's head width unless it is set.
    assert Config.from_dict({"model": {"arch": "pspnet50"}}).model.head_channels == 512


def test_flag_only_training_on_a_cpu_uses_output_stride_16(tmp_path) -> None:
    """`pspnet train` with flags only: stride 16 on a CPU; a --set or a config file wins."""
    cpu = ["train.device=cpu"]
    assert build_config("r", "t", None, 5, overrides=cpu).model.output_stride == 16
    assert build_config(
        "r", "t", None, 5, overrides=[*cpu, "model.output_stride=8"]
    ).model.output_stride == 8
    paper = Path(__file__).resolve().parents[2] / "configs" / "ade20k_pspnet50.yaml"
    assert build_config(config_file=paper, overrides=cpu).model.output_stride == 8
    # Library users building a Config directly keep the paper's default.
    assert Config.from_dict({"model": {"num_classes": 5}}).model.output_stride == 8


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"train": {"batch_sise": 8}}, "train.batch_sise"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"batch_size": 6, "accum_steps": 4}}, "train.accum_steps"),
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"data": {"crop_size": [4, 4]}}, "data.crop_size"),
        ({"data": {"crop_size": [320, 320, 320]}}, "data.crop_size"),
        ({"data": {"finish_crop_size": [40.5, 48], "finish_share": 0.3}},
         "data.finish_crop_size"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"model": {"output_stride": 4}}, "model.output_stride"),
        ({"model": {"num_classes": 300}, "data": {"ignore_index": 255}}, "data.ignore_index"),
    ],
)
def test_errors_name_the_dotted_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.from_dict(data)


def test_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = Config.from_dict({"model": {"num_classes": 5}})
    cfg2 = cfg.with_overrides(["optim.lr=0.02", "data.crop_size=64", "train.time_budget=1.5"])
    assert cfg2.optim.lr == 0.02 and cfg2.data.crop_size == (64, 64)
    assert cfg2.train.time_budget == 1.5
    p = tmp_path / "c.yaml"
    p.write_text(cfg2.to_yaml())
    assert Config.from_yaml(p) == cfg2
    assert Config.from_yaml(p, ["train.seed=3"]).train.seed == 3


def test_precedence_file_flags_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model: {num_classes: 4}\ntrain: {batch_size: 4, epochs: 3}\noptim: {lr: 0.5}\n")
    cfg = build_config(
        "root", "train.txt", None, None, batch_size=2, config_file=p,
        overrides=["train.batch_size=6", "data.crop_size=[64, 96]"],
    )
    assert cfg.model.num_classes == 4  # file
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.5  # file
    assert cfg.train.batch_size == 6  # --set beats the flag
    assert cfg.data.crop_size == (64, 96) and cfg.data.root == "root"
    assert build_config("r", "t", None, 7, arch="pspnet50").model.head_channels == 512


@pytest.mark.parametrize("layers", [50, 101])
@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_recipes(dataset: str, layers: int) -> None:
    cfg = Config.from_yaml(CONFIGS / f"{dataset}_pspnet{layers}.yaml")
    classes, crop, epochs = PAPER[dataset]
    assert cfg.model.arch == f"pspnet{layers}" and cfg.model.num_classes == classes
    assert cfg.model.output_stride == 8 and cfg.model.bins == (1, 2, 3, 6)
    assert cfg.model.head_channels == 512 and cfg.model.aux
    assert cfg.data.crop_size == (crop, crop) and cfg.data.dataset == dataset
    assert cfg.data.scale == (0.5, 2.0) and cfg.data.rotate == (-10.0, 10.0)
    assert cfg.train.epochs == epochs and cfg.train.batch_size == 16
    assert cfg.train.aux_weight == 0.4 and cfg.train.sync_bn
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.power,
            cfg.optim.head_lr_mult) == (0.01, 0.9, 1e-4, 0.9, 10.0)
    if dataset == "voc2012":
        assert cfg.data.train_split == "train_aug"


def test_camvid_cpu_recipe() -> None:
    cfg = Config.from_yaml(CONFIGS / "camvid_cpu.yaml")
    assert cfg.model.arch == "pspnet_r18" and cfg.model.num_classes == 11
    assert cfg.train.time_budget and cfg.train.batch_size == 8
    assert cfg.data.dataset == "camvid" and cfg.train.precision == "auto"
