"""The `pspnet train` flags: one table, each flag setting exactly one config field."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pspnet.cli import build_parser
from pspnet.config import Config, ConfigError, apply_overrides, merge, parse_override
from pspnet.config.flags import TRAIN_FLAGS, flag_values, flags_tree


def _config_fields() -> set[str]:
    cfg = Config()
    return {
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(Config)
        for field in dataclasses.fields(getattr(cfg, section.name))
    }


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_flag_sets_exactly_one_config_field_and_back() -> None:
    keys = [f.key for f in TRAIN_FLAGS]
    assert set(keys) <= _config_fields()  # each flag names a real field ...
    assert len(set(keys)) == len(keys)  # ... and no field has two flags
    assert len({f.flag for f in TRAIN_FLAGS}) == len(TRAIN_FLAGS)
    for f in TRAIN_FLAGS:
        section, name = f.key.split(".")
        assert flags_tree({f.dest: 1}) == {section: {name: 1}}


def test_the_cli_declares_the_table_and_only_the_non_config_options() -> None:
    options = {
        a.option_strings[-1] for a in _train_parser()._actions if a.option_strings
    }
    aliases = {a for f in TRAIN_FLAGS for a in f.aliases}  # hidden, deprecated spellings
    assert options == ({f.flag for f in TRAIN_FLAGS} | aliases
                       | {"--help", "--config", "--set", "--quiet", "--dry-run"})


def test_flag_values_reach_the_config() -> None:
    from pspnet.engine.run_config import build_config

    args = _train_parser().parse_args(
        ["--data-root", "D", "--train-list", "t.txt", "--num-classes", "5", "--crop-size", "64",
         "--batch-size", "4", "--time-budget", "1.5", "--skip-bad", "--resume", "auto",
         "--set", "train.device=cpu"]
    )  # fmt: skip
    cfg = build_config(config_file=args.config, overrides=args.set, **flag_values(args))
    assert (cfg.data.root, cfg.data.train_list, cfg.model.num_classes) == ("D", "t.txt", 5)
    assert cfg.data.crop_size == (64, 64) and cfg.train.batch_size == 4
    assert cfg.train.time_budget == 1.5 and cfg.data.skip_bad == 10 and cfg.train.resume == "auto"
    with pytest.raises(TypeError, match="unknown training flag 'batch'"):
        build_config(batch=4)


def test_one_override_parser_and_one_merge() -> None:
    assert parse_override(" optim.lr =0.02") == ("optim.lr", 0.02)
    assert parse_override("model.bins=[1, 2]") == ("model.bins", [1, 2])
    assert parse_override("train.resume=") == ("train.resume", "")
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("optim.lr")
    tree = {"optim": {"lr": 0.1, "power": 0.9}, "model": {"bins": [1]}}
    assert apply_overrides(tree, ["optim.lr=0.5"]) == merge(tree, {"optim": {"lr": 0.5}})
    assert tree["optim"]["lr"] == 0.1  # neither modifies its input
    assert merge(tree, {"model": 3}) == {"optim": tree["optim"], "model": 3}


def test_folder_flags_reach_the_config_and_conflict_with_list_files() -> None:
    from pspnet.engine.run_config import build_config

    args = _train_parser().parse_args(
        ["--images", "photos", "--labels", "masks", "--val-fraction", "0.25", "--num-classes",
         "4", "--set", "train.device=cpu"]
    )  # fmt: skip
    cfg = build_config(config_file=args.config, overrides=args.set, **flag_values(args))
    assert (cfg.data.images_dir, cfg.data.labels_dir, cfg.data.val_fraction) == (
        "photos", "masks", 0.25)
    for flags, match in [
        ({"train_list": "t.txt"}, r"`data.train_list` \(--train-list\) cannot be combined"),
        ({"data_root": "D"}, r"`data.root` \(--data-root\) cannot be combined"),
        ({"labels": None}, r"`data.labels_dir` is missing: give both --images DIR and --labels"),
        ({"val_fraction": 1.0}, r"`data.val_fraction` must be a share between 0 and 1"),
        ({"images": None, "labels": None}, r"`data.val_fraction` splits image and label folders"),
    ]:
        given = {"images": "photos", "labels": "masks", "val_fraction": 0.2, **flags}
        with pytest.raises(ConfigError, match=match):
            build_config(num_classes=4, **given)


def test_the_old_class_file_flag_still_works_and_says_it_is_deprecated(capsys) -> None:
    from pspnet.engine.run_config import build_config

    old = _train_parser().parse_args(["--class-names", "c.txt"])
    assert "note: --class-names is deprecated, use --classes-file" in capsys.readouterr().err
    new = _train_parser().parse_args(["--classes-file", "c.txt"])
    assert capsys.readouterr().err == ""
    assert flag_values(old) == flag_values(new) and new.classes_file == "c.txt"
    assert "--class-names" not in _train_parser().format_help()  # hidden
    # ... and by keyword, for code that called build_config(class_names=...)
    assert build_config(num_classes=2, class_names="c.txt").data.class_names == "c.txt"
    assert build_config(num_classes=2, classes_file="c.txt").data.class_names == "c.txt"
