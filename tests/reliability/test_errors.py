"""One error path: every user error is one ``error:`` line, no traceback, non-zero exit.

Each test reproduces a case of the issue that used to end in a traceback, a raw ``[Errno N]``
or a message naming a flag that does not exist: a closed pipe (``pspnet list-models | head
-1``), output paths that are files or unwritable (checked before the work starts), an error
raised inside a DataLoader worker, a negative ``train.seed`` (raised inside a worker),
``--device tpu``, and advice naming a flag the verb lacks (``--max-pixels`` in predict).
"""

from __future__ import annotations

import argparse
import ast
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import build_parser, main
from pspnet.cli.errors import BROKEN_PIPE_STATUS, one_line, run_verb
from pspnet.config import Config, ConfigError

SRC = Path(pspnet.__file__).resolve().parent


def _one_error_line(err: str) -> str:
    """The single ``error:`` line of a command's stderr (and nothing else)."""
    assert "Traceback" not in err and "[Errno" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = pspnet.create_model("pspnet_r18", 3, head_channels=16)
    return save_weights(model, tmp_path_factory.mktemp("errors") / "w",
                        WeightsMeta(model.config, classes=("a", "b", "c")))


# --------------------------------------------------------------------------------------------
# A closed pipe


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["list-models"], ["--help"]])
def test_closed_stdout_is_no_traceback(argv: list[str]) -> None:
    # `pspnet list-models | head -1`: the reader has gone when we write. Closing the read end
    # before the child starts makes every write fail, so the case is reproduced every time.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "pspnet", *argv], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    finally:
        os.close(write_end)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert r.stderr == "", r.stderr
    # argparse swallows the OSError of writing --help itself (then exits 0); list-models
    # reaches our handler, which exits like a program stopped by SIGPIPE
    expected = (0, BROKEN_PIPE_STATUS) if argv == ["--help"] else (BROKEN_PIPE_STATUS,)
    assert r.returncode in expected, r.returncode


def test_broken_pipe_inside_a_verb_exits_quietly(capsys) -> None:
    def verb(_: argparse.Namespace) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    assert run_verb(verb, argparse.Namespace(debug=False)) == BROKEN_PIPE_STATUS
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# Output paths, checked before the work starts


def test_predict_out_that_is_a_file_fails_before_loading(tmp_path: Path, capsys) -> None:
    (tmp_path / "im.png").write_bytes(b"")
    (tmp_path / "taken").write_text("mine")
    # missing weights: if the error is about --out, --out was checked first
    for out in ("taken", "taken/sub"):
        assert main(["predict", "--weights", str(tmp_path / "missing"), str(tmp_path / "im.png"),
                     "--out", str(tmp_path / out)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: --out {tmp_path / out}:") and "is a file" in line
    assert (tmp_path / "taken").read_text() == "mine"


def test_export_out_that_is_a_folder_fails_before_the_export(tmp_path: Path, weights: Path,
                                                             monkeypatch, capsys) -> None:
    import pspnet.export as export

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the export ran although --out cannot be written")

    monkeypatch.setattr(export, "export_onnx", never)
    monkeypatch.setattr(export, "export_torchscript", never)
    for fmt in ("onnx", "torchscript"):
        assert main(["export", "--weights", str(weights), "--format", fmt, "--out",
                     str(tmp_path)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"--out {tmp_path}: this is a folder" in line and "file path" in line


@pytest.mark.parametrize("argv_out", [
    ["evaluate", "--data-root", ".", "--val-list", "v.txt", "--out"],
    ["data", "check", "--list", "l.txt", "--num-classes", "3", "--json"],
    ["benchmark", "--json"],
    ["train", "--work-dir"],
    ["demo", "--out"],
])
def test_every_verb_checks_its_output_path_first(argv_out: list[str], tmp_path: Path,
                                                 weights: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = [*argv_out, str(blocker / "inside")]
    if argv[0] == "evaluate":
        argv += ["--weights", str(weights)]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{blocker} is a file" in line, line


def test_unwritable_output_folder_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    import pspnet.cli.common as common

    target = tmp_path / "ro"
    target.mkdir()
    real = os.access
    # as root every folder is writable: make this one read-only for the check
    monkeypatch.setattr(common.os, "access",
                        lambda p, mode: False if Path(p) == target else real(p, mode))
    assert main(["predict", "--weights", str(tmp_path / "w"), str(tmp_path / "im.png"),
                 "--out", str(target)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--out {target}" in line and "permission denied" in line


def test_os_errors_become_path_reason_and_fix(capsys) -> None:
    def verb(_: argparse.Namespace) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/mask.png")

    assert run_verb(verb, argparse.Namespace(debug=False)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: /data/out/mask.png: no space left on device; ")
    assert "free space" in line


# --------------------------------------------------------------------------------------------
# Errors inside loader workers


class _BadFile(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        raise ValueError(f"data/img{i}.png: truncated PNG; re-encode or remove the file")


@pytest.mark.slow
def test_error_in_a_loader_worker_is_one_line(capsys) -> None:
    def verb(_: argparse.Namespace) -> int:
        for _batch in DataLoader(_BadFile(), num_workers=1):
            pass
        return 0

    assert run_verb(verb, argparse.Namespace(debug=False)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == ("error: data/img0.png: truncated PNG; re-encode or remove the file "
                    "(in data loader worker 0)"), line


def test_negative_seed_is_refused_up_front(tmp_path: Path, capsys) -> None:
    # it used to be raised by the augmentation, inside a loader worker, with its traceback
    with pytest.raises(ConfigError, match=r"train\.seed.*-1"):
        Config.from_dict({"train": {"seed": -1}})
    assert main(["train", "--data-root", str(tmp_path), "--train-list", str(tmp_path / "t.txt"),
                 "--num-classes", "3", "--work-dir", str(tmp_path / "run"),
                 "--set", "train.seed=-1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.seed" in line and "-1" in line
    assert not (tmp_path / "run").exists()


def test_one_line_keeps_plain_messages() -> None:
    assert one_line(ValueError("x.png: bad; fix it")) == "x.png: bad; fix it"


# --------------------------------------------------------------------------------------------
# --device


@pytest.mark.parametrize("device, expected", [
    ("tpu", "--device tpu: not a device"),
    ("cuda:99", "--device cuda:99: "),
])
def test_unknown_or_missing_device_is_one_line(device: str, expected: str, tmp_path: Path,
                                               weights: Path, capsys) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im.png")
    assert main(["predict", "--weights", str(weights), str(tmp_path / "im.png"), "--out",
                 str(tmp_path / "o"), "--device", device]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# Advice names flags that exist


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser by name (``data check`` included)."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return out


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


#: Errors raised by these functions reach the user through these verbs only: a flag they name
#: must be a flag of every one of them.
VERB_FUNCTIONS = {
    "cmd_predict": ["predict"], "check_overlay_flags": ["predict"],
    "cmd_evaluate": ["evaluate"], "_evaluate": ["evaluate"], "protocol_options": ["evaluate"],
    "adhoc_options": ["predict", "evaluate"], "_fast_path": ["predict", "evaluate"],
    "cmd_export": ["export"], "cmd_serve": ["serve"], "serve_from_args": ["serve"],
    "cmd_data_check": ["data check"], "_check_sources": ["data check"],
    "cmd_benchmark": ["benchmark"], "_check_benchmark_flags": ["benchmark"],
    "cmd_zoo": ["zoo"], "cmd_convert": ["convert"], "cmd_info": ["info"],
    "cmd_demo": ["demo"], "cmd_train": ["train"],
}
#: Flags of other programs that texts may name (torchrun; bench/camvid.py's --limit and
#: --minutes, which no verb has since the demo trains fixed iterations; git).
FOREIGN_FLAGS = {"--nproc-per-node", "--nproc_per_node", "--limit", "--minutes", "--short"}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
#: A string that is one command-line word of another program (``["git", "--short"]``).
_ARGV_WORD = re.compile(r"--[\w-]+(=\S*)?")


def _string_flags(node: ast.AST) -> set[str]:
    found: set[str] = set()
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Constant) and isinstance(sub.value, str)
                and not _ARGV_WORD.fullmatch(sub.value)):
            found |= set(_FLAG.findall(sub.value))
    return found


def test_every_flag_a_message_names_exists() -> None:
    verbs = _verb_parsers()
    every = set().union(*map(_flags, verbs.values())) | {"--debug", "--help", "--version"}
    unknown: list[str] = []
    wrong_verb: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(SRC)
        for flag in _string_flags(tree) - every - FOREIGN_FLAGS:
            unknown.append(f"{where}: {flag}")
        for fn in ast.walk(tree):
            if not (isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and fn.name in VERB_FUNCTIONS):
                continue
            # the errors a verb raises give advice for that verb (its listings may name
            # the flags of other verbs, e.g. zoo: "train --init-weights NAME")
            for error in (n for n in ast.walk(fn) if isinstance(n, ast.Raise)):
                for flag in _string_flags(error) - FOREIGN_FLAGS:
                    for verb in VERB_FUNCTIONS[fn.name]:
                        if flag not in _flags(verbs[verb]) and flag != "--debug":
                            wrong_verb.append(f"{where}:{fn.name}: {flag} is no flag of {verb}")
    assert not unknown, f"messages name flags that no verb has: {unknown}"
    assert not wrong_verb, wrong_verb


def test_predict_pixel_limit_advice_names_a_flag_predict_has(tmp_path: Path, weights: Path,
                                                             capsys) -> None:
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "im.png")
    args = ["predict", "--weights", str(weights), str(tmp_path / "im.png"), "-q",
            "--no-overlay"]
    assert main([*args, "--out", str(tmp_path / "a"), "--max-pixels", "1000"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--max-pixels" in line and "--max-pixels" in _flags(_verb_parsers()["predict"])
    # ... and following the advice works
    assert main([*args, "--out", str(tmp_path / "b"), "--max-pixels", "2000"]) == 0
    assert (tmp_path / "b" / "im.png").exists()
