"""What ``pspnet train`` chose where nothing set a value: announced at the start, and
``pspnet train --dry-run`` lists it without training or writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _engine_tiny import NUM_CLASSES, make_tiny_dataset, tiny_config
from pspnet.cli import main
from pspnet.config import ConfigError
from pspnet.engine.defaults import (FINISH_WHOLE_SHARE, WHOLE_FRAME_MIN_EPOCHS, crop_for_budget,
                                    crop_from_images, crop_reason, precision_reason,
                                    resolve_choices, schedule_choices, whole_frame_candidate)
from pspnet.engine.run_config import (CPU_SCRATCH_BATCH, build_config_explained, check_resume,
                                      cpu_scratch_lr, describe_dry_run)
from pspnet.engine.setup import time_train_step
from pspnet.engine.train import train
from pspnet.models import build_model


def _flags(data: dict, work: Path) -> list[str]:
    return ["--data-root", str(data["root"]), "--train-list", str(data["train"]),
            "--val-list", str(data["val"]), "--num-classes", str(NUM_CLASSES),
            "--work-dir", str(work), "--batch-size", "4", "--set", "train.device=cpu"]


def test_dry_run_lists_each_choice_with_its_reason_and_writes_nothing(
    tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "never"
    assert main(["train", *_flags(tiny_data, work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not work.exists()  # nothing written: not even the work directory
    chosen = {line.split(" = ")[0].strip(): line for line in out.splitlines()
              if line.startswith("  ") and " = " in line}
    # no config file, on the CPU: the CPU stride; the rest from the data and the machine
    assert "stride 8's time" in chosen["model.output_stride"]
    assert chosen["data.crop_size"].startswith("  data.crop_size = [40, 40]: the shortest side")
    assert chosen["train.precision"].split(":")[0].endswith(("fp32", "bf16"))
    assert "train.epochs" in chosen and "(100 steps of 2 per epoch)" in chosen["train.epochs"]
    assert "data: 8 training images, 3 validation images; batch 4; 100 steps" in out
    assert "output_stride: 16" in out and "crop_size:\n    - 40\n    - 40" in out
    # from scratch on a CPU: the measured learning rate (for the batch of 4 given) and scale
    # range, each with its reason; the batch was given, so it is not among the choices
    assert chosen["optim.lr"].startswith("  optim.lr = 0.02: training from scratch")
    assert "batch 4" in chosen["optim.lr"] and "train.batch_size" not in chosen
    assert "data.scale=[0.5,2] for the paper's" in chosen["data.scale"]
    assert "lr: 0.02" in out and "scale:\n    - 0.75\n    - 1.5" in out


def test_from_scratch_on_a_cpu_the_batch_is_4_and_the_rate_follows_the_batch(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = {"data_root": str(tiny_data["root"]), "train_list": str(tiny_data["train"]),
              "num_classes": NUM_CLASSES}
    cpu = ["train.device=cpu"]
    cfg, chosen = build_config_explained(**common, overrides=cpu)
    why = {c.key: c.why for c in chosen}
    assert (cfg.train.batch_size, cfg.optim.lr) == (CPU_SCRATCH_BATCH, 0.02)
    assert "--batch-size 8" in why["train.batch_size"]
    cfg, chosen = build_config_explained(**common, batch_size=8, overrides=cpu)  # 0.03 at 8
    assert (cfg.train.batch_size, cfg.optim.lr) == (8, 0.03)
    assert "train.batch_size" not in [c.key for c in chosen]
    assert [cpu_scratch_lr(n) for n in (2, 4, 7, 8, 16)] == [0.02, 0.02, 0.02, 0.03, 0.03]
    # BatchNorm needs 2 images per forward pass: accumulation and processes raise the batch
    cfg, _ = build_config_explained(**common, overrides=[*cpu, "train.accum_steps=4"])
    assert (cfg.train.batch_size, cfg.optim.lr) == (8, 0.03)
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert build_config_explained(**common, overrides=cpu)[0].train.batch_size == 6
    monkeypatch.delenv("WORLD_SIZE")
    # fine-tuning keeps the dataclass batch and the paper's rate
    cfg, chosen = build_config_explained(**common, backbone_weights=str(tmp_path / "b.pth"),
                                         overrides=cpu)
    assert (cfg.train.batch_size, cfg.optim.lr) == (8, 0.01)


def test_a_resumed_run_keeps_the_batch_it_chose(tiny_data: dict, tmp_path: Path) -> None:
    ran = tiny_config(tiny_data, tmp_path / "w").with_overrides(["train.batch_size=8"])
    state = {"config": ran.to_dict(), "world_size": 1}  # chosen when the default was 8
    given = ran.with_overrides(["train.batch_size=4"])  # the same command, today's choice
    merged = check_resume(given, state, tmp_path / "w" / "last.pt", 1, {"train.batch_size"})
    assert merged.train.batch_size == 8
    with pytest.raises(ConfigError, match="train.batch_size was 8, now 4"):  # set: refused
        check_resume(given, state, tmp_path / "w" / "last.pt", 1)


def test_cpu_choices_leave_what_was_set_and_fine_tuning_alone(tiny_data: dict,
                                                              tmp_path: Path) -> None:
    common = {"data_root": str(tiny_data["root"]), "train_list": str(tiny_data["train"]),
              "num_classes": NUM_CLASSES}
    cfg, chosen = build_config_explained(**common, overrides=["optim.lr=0.05",
                                                              "data.scale=[0.5,2]"],
                                         batch_size=6)
    assert cfg.optim.lr == 0.05 and cfg.data.scale == (0.5, 2.0) and cfg.train.batch_size == 6
    assert [c.key for c in chosen] == ["model.output_stride"]
    weights = tmp_path / "backbone.pth"  # fine-tuning keeps the paper's rate
    cfg, chosen = build_config_explained(**common, backbone_weights=str(weights))
    assert cfg.optim.lr == 0.01 and "optim.lr" not in [c.key for c in chosen]


def test_a_run_that_sets_everything_is_told_nothing_was_chosen(
    tiny_data: dict, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "w")  # crop, precision, workers, length all set
    cfg = cfg.with_overrides(["train.val_interval=0"])
    text = describe_dry_run(cfg, [], torch.device("cpu"))
    assert "nothing was chosen for you" in text and "6 steps" in text


def test_dry_run_raises_what_the_run_would(tiny_data: dict, tmp_path: Path) -> None:
    cfg, chosen = build_config_explained(
        data_root=str(tiny_data["root"]), train_list=str(tiny_data["train"]),
        num_classes=NUM_CLASSES, work_dir=str(tmp_path / "w"), batch_size=16)  # fmt: skip
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        describe_dry_run(cfg, chosen, torch.device("cpu"))


def test_a_config_file_keeps_its_stride(tiny_data: dict, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model:\n  output_stride: 8\n")
    cfg, chosen = build_config_explained(config_file=tmp_path / "c.yaml", num_classes=3,
                                         data_root=str(tiny_data["root"]),
                                         train_list=str(tiny_data["train"]))
    assert cfg.model.output_stride == 8 and chosen == []


def test_the_class_file_gives_the_number_of_classes(tiny_data: dict, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("sky\nroad\ncar\n")
    common = {"data_root": str(tiny_data["root"]), "train_list": str(tiny_data["train"])}
    cfg, _ = build_config_explained(classes_file=str(names), **common)
    assert cfg.model.num_classes == 3
    assert build_config_explained(classes_file=str(names), num_classes=3, **common)[0] == cfg
    with pytest.raises(ConfigError, match=r"data.class_names.*--classes-file.*nope.txt"):
        build_config_explained(classes_file=str(tmp_path / "nope.txt"), **common)
    with pytest.raises(ConfigError, match="--num-classes K.*--classes-file FILE"):
        build_config_explained(**common)


def test_precision_reason_names_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert "no native bf16" in precision_reason("fp32", cpu)
    assert "natively" in precision_reason("bf16", cpu)
    assert "gradient scaler" in precision_reason("fp16", torch.device("cuda"))


def test_only_open_values_are_reported(tiny_data: dict, tmp_path: Path) -> None:
    given = tiny_config(tiny_data, tmp_path / "w").with_overrides(
        ["data.crop_size=null", "train.precision=auto", "train.max_iter=null"])
    resolved = given.with_overrides(["data.crop_size=[32, 32]", "train.precision=fp32"])
    keys = [c.key for c in resolve_choices(given, resolved, torch.device("cpu"), 2)]
    assert keys == ["data.crop_size", "train.precision"]  # channels_last, workers were set
    assert [c.key for c in schedule_choices(resolved, 2)] == ["train.epochs"]


def test_training_announces_its_choices_in_the_log(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    cfg = tiny_config(tiny_data, work, max_iter=1).with_overrides(
        ["data.crop_size=null", "train.precision=auto"])
    train(cfg, progress=False)
    events = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.index("defaults") == kinds.index("start") + 1  # the log's first lines
    rec = events[kinds.index("defaults")]
    keys = [c["key"] for c in rec["chosen"]]
    assert keys == ["data.crop_size", "train.precision"]
    assert all(c["why"] for c in rec["chosen"])


# --- The time budget's crop: whole images when the budget affords enough epochs of them ------


def test_whole_images_are_a_candidate_only_when_larger_than_the_crop_and_small() -> None:
    assert whole_frame_candidate((320, 320), (360, 480))
    assert not whole_frame_candidate((320, 320), None)  # the images differ in size
    assert not whole_frame_candidate((40, 40), (40, 40))  # the square crop is the whole image
    assert not whole_frame_candidate((320, 320), (1024, 2048))  # large: crops keep their role
    assert whole_frame_candidate((320, 320), (480, 640))  # WHOLE_FRAME_MAX_PIXELS: 4 crops


def test_elongated_images_train_whole_at_any_budget() -> None:
    # 448x224 (2:1): a 224 square keeps half of the height; the whole scene instead
    assert crop_from_images((224, 224), (448, 224)) == (448, 224)
    assert crop_from_images((200, 200), (200, 300)) == (200, 300)  # 3:2, ELONGATED_ASPECT
    assert crop_from_images((240, 240), (240, 320)) == (240, 240)  # 4:3 keeps the square
    assert crop_from_images((320, 320), (360, 480)) == (320, 320)  # crop capped below the side
    assert crop_from_images((320, 320), (320, 2048)) == (320, 320)  # too large to train whole
    assert crop_from_images((224, 224), None) == (224, 224)  # the images differ in size
    why = crop_reason((448, 224))
    assert why.startswith("the whole 448x224 image") and "only 50% of the 448-px side" in why
    assert crop_reason((240, 240)).startswith("the shortest side")


def test_resolving_an_open_crop_on_elongated_images_says_why(tmp_path: Path) -> None:
    tall = make_tiny_dataset(tmp_path / "tall", n_train=4, n_val=1, size=(64, 32))  # 2:1
    cfg, chosen = build_config_explained(
        data_root=str(tall["root"]), train_list=str(tall["train"]), num_classes=NUM_CLASSES,
        work_dir=str(tmp_path / "w"), batch_size=2, epochs=1)
    text = describe_dry_run(cfg, chosen, torch.device("cpu"))
    line = next(x for x in text.splitlines() if x.strip().startswith("data.crop_size"))
    assert "[64, 32]" in line and "the whole 64x32 image" in line


def test_crop_for_budget_counts_the_epochs_the_budget_affords() -> None:
    # 367 images, batch 8, 2.0 s a step: 3600 s affords 1800 steps = 39.2 epochs
    crop, choice = crop_for_budget((320, 320), (360, 480), 2.0, 3600.0, 8, 367)
    assert crop == (360, 480) and choice.value == "[360, 480]"
    assert "~39 epochs" in choice.why and "2.00 s" in choice.why and "--crop-size" in choice.why
    # half the time: 19.6 epochs, fewer than WHOLE_FRAME_MIN_EPOCHS: the square crop
    crop, choice = crop_for_budget((320, 320), (360, 480), 2.0, 1800.0, 8, 367)
    assert crop == (320, 320) and choice.value == "[320, 320]"
    assert f"fewer than the {WHOLE_FRAME_MIN_EPOCHS}" in choice.why and "~20 epochs" in choice.why
    edge = WHOLE_FRAME_MIN_EPOCHS * 367 / 8 * 2.0  # exactly the threshold: whole images
    assert crop_for_budget((320, 320), (360, 480), 2.0, edge, 8, 367)[0] == (360, 480)


def test_timing_a_step_leaves_the_network_and_the_random_state_as_they_were(
    tiny_data: dict, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "w")
    torch.manual_seed(0)
    net = build_model(cfg.model).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = time_train_step(net, cfg, torch.device("cpu"), (40, 48))
    assert seconds > 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew in a forked generator
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics restored
    assert all(p.grad is None for p in net.parameters())


def test_a_budgeted_run_trains_on_whole_images_when_it_affords_enough_epochs(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    import pspnet.engine.defaults as defaults

    monkeypatch.setattr(defaults, "WHOLE_FRAME_MIN_EPOCHS", 0)  # any budget affords "enough"
    work = tmp_path / "run"
    cfg = tiny_config(tiny_data, work, max_iter=None, time_budget=0.05, budget_warmup_iters=1,
                      budget_measure_iters=1).with_overrides(["data.crop_size=null"])
    train(cfg, progress=False)
    assert yaml.safe_load((work / "config.yaml").read_text())["data"]["crop_size"] == [40, 48]
    events = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["crop_size"] == [40, 48]
    chosen = next(e for e in events if e["event"] == "defaults")["chosen"]
    crops = [c for c in chosen if c["key"] == "data.crop_size"]
    assert len(crops) == 1 and crops[0]["why"].startswith("the whole 40x48 image: the budget")


def test_a_budgeted_run_that_keeps_the_square_crop_finishes_on_whole_images(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    import pspnet.engine.defaults as defaults

    monkeypatch.setattr(defaults, "WHOLE_FRAME_MIN_EPOCHS", 10**9)  # no budget affords them
    work = tmp_path / "run"
    cfg = tiny_config(tiny_data, work, max_iter=None, time_budget=0.05, budget_warmup_iters=1,
                      budget_measure_iters=1).with_overrides(["data.crop_size=null"])
    train(cfg, progress=False)
    data = yaml.safe_load((work / "config.yaml").read_text())["data"]
    assert data["crop_size"] == [40, 40] and data["finish_crop_size"] == [40, 48]
    assert data["finish_share"] == defaults.FINISH_WHOLE_SHARE
    events = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    chosen = {c["key"]: c for c in next(e for e in events if e["event"] == "defaults")["chosen"]}
    assert chosen["data.crop_size"]["value"] == "[40, 40]"
    assert chosen["data.finish_crop_size"]["value"] == "[40, 48]"
    assert "whole 40x48 images after the square crops" in chosen["data.finish_crop_size"]["why"]
    # The stride was set (8, tiny_config's), not chosen: the last share keeps it.
    assert data["finish_output_stride"] is None and "data.finish_output_stride" not in chosen


def test_a_chosen_stride_finishes_at_the_papers(tiny_data: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import pspnet.engine.defaults as defaults
    from pspnet.engine.defaults import FINISH_OUTPUT_STRIDE, Choice

    monkeypatch.setattr(defaults, "WHOLE_FRAME_MIN_EPOCHS", 10**9)  # the square crop stays
    work = tmp_path / "run"
    cfg = tiny_config(tiny_data, work, max_iter=None, time_budget=0.05, budget_warmup_iters=1,
                      budget_measure_iters=1).with_overrides(["data.crop_size=null",
                                                              "model.output_stride=16"])
    train(cfg, progress=False, chosen=[Choice("model.output_stride", "16", "for the CPU")])
    data = yaml.safe_load((work / "config.yaml").read_text())["data"]
    assert data["finish_output_stride"] == FINISH_OUTPUT_STRIDE == 8
    events = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    chosen = {c["key"]: c for c in next(e for e in events if e["event"] == "defaults")["chosen"]}
    assert chosen["data.finish_output_stride"]["value"] == "8"
    assert "data.finish_output_stride=16 keeps one" in chosen["data.finish_output_stride"]["why"]
    # The switch itself, and final/ at 8: tests/engine/test_finish_crop.py.


def test_a_set_crop_or_share_is_not_given_a_finish(tiny_data: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import pspnet.engine.defaults as defaults

    monkeypatch.setattr(defaults, "WHOLE_FRAME_MIN_EPOCHS", 10**9)
    for name, sets in (("crop", ["data.crop_size=40"]),
                       ("share", ["data.crop_size=null", "data.finish_crop_size=[40,44]",
                                  "data.finish_share=0.5"])):
        work = tmp_path / name
        cfg = tiny_config(tiny_data, work, max_iter=None, time_budget=0.02,
                          budget_warmup_iters=1, budget_measure_iters=1).with_overrides(sets)
        train(cfg, progress=False)
        data = yaml.safe_load((work / "config.yaml").read_text())["data"]
        expected = (None, 0.0) if name == "crop" else ([40, 44], 0.5)
        assert (data["finish_crop_size"], data["finish_share"]) == expected


def test_the_dry_run_says_the_budget_may_choose_whole_images(tiny_data: dict,
                                                            tmp_path: Path) -> None:
    cfg, chosen = build_config_explained(
        data_root=str(tiny_data["root"]), train_list=str(tiny_data["train"]),
        num_classes=NUM_CLASSES, work_dir=str(tmp_path / "w"), batch_size=4, time_budget=30)
    text = describe_dry_run(cfg, chosen, torch.device("cpu"))
    line = next(x for x in text.splitlines() if x.strip().startswith("data.crop_size"))
    assert "[40, 40]" in line and "whole 40x48 images instead" in line
    assert f"at least {WHOLE_FRAME_MIN_EPOCHS} epochs" in line
    assert f"else the last {FINISH_WHOLE_SHARE:.0%} of the budget on them at output " \
           "stride 8" in line  # the stride was chosen for the CPU: the last share at 8


def test_a_resumed_run_keeps_the_crop_it_chose(tiny_data: dict, tmp_path: Path) -> None:
    chose = tiny_config(tiny_data, tmp_path / "w").with_overrides(["data.crop_size=[40, 48]"])
    given = chose.with_overrides(["data.crop_size=null"])  # the same command, resumed
    state = {"config": chose.to_dict(), "world_size": 1}
    merged = check_resume(given, state, tmp_path / "w" / "last.pt", 1)
    assert merged.data.crop_size == (40, 48)


def test_a_resumed_run_keeps_the_finish_it_chose(tiny_data: dict, tmp_path: Path) -> None:
    chose = tiny_config(tiny_data, tmp_path / "w").with_overrides(
        ["data.crop_size=[40, 40]", "data.finish_crop_size=[40, 48]", "data.finish_share=0.33"])
    given = chose.with_overrides(["data.crop_size=null", "data.finish_crop_size=null",
                                  "data.finish_share=0"])  # the same command, resumed
    state = {"config": chose.to_dict(), "world_size": 1}
    merged = check_resume(given, state, tmp_path / "w" / "last.pt", 1)
    assert merged.data.crop_size == (40, 40) and merged.data.finish_crop_size == (40, 48)
    assert merged.data.finish_share == 0.33 and merged.data.finish_output_stride is None
    strided = chose.with_overrides(["model.output_stride=16", "data.finish_output_stride=8"])
    state = {"config": strided.to_dict(), "world_size": 1}
    again = given.with_overrides(["model.output_stride=16"])
    assert check_resume(again, state, tmp_path / "w" / "last.pt", 1).data.finish_output_stride == 8
