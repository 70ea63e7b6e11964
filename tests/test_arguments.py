"""diablo.arguments: the one-line parser, the bounded integer type, the device and writable-file
checks and the one-line failure convention shared by diablo's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from diablo import arguments, evaluate, gallery_commands
from diablo.arguments import Parser, count, device_problem, fail, one_line, writable_file_problem


def parse_error(parser: argparse.ArgumentParser, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one stderr line of a refused command line (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_parser_errors_are_one_line_with_the_prog(capsys: pytest.CaptureFixture) -> None:
    parser = Parser(prog="python -m diablo.thing")
    parser.add_argument("--size", type=count(1), required=True)
    parser.add_argument("--mode", choices=("a", "b"))
    assert (
        parse_error(parser, [], capsys) == "python -m diablo.thing: error: the following arguments are required: --size"
    )
    assert parse_error(parser, ["--size", "1", "--mode", "c"], capsys).startswith(
        "python -m diablo.thing: error: argument --mode: invalid choice: 'c'"
    )
    assert parser.parse_args(["--size", "3"]).size == 3


def test_subparsers_of_the_parser_class_are_one_line_too(capsys: pytest.CaptureFixture) -> None:
    parser = Parser(prog="p")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("go").add_argument("-k", type=count(1))
    assert parse_error(parser, ["go", "-k", "0"], capsys) == "p go: error: argument -k: must be at least 1, got 0"


@pytest.mark.parametrize(
    ("minimum", "text", "expected"),
    [(0, "0", 0), (1, "1", 1), (1, "12", 12), (2, " 7 ", 7), (-3, "-3", -3)],
)
def test_count_accepts_integers_from_the_minimum(minimum: int, text: str, expected: int) -> None:
    assert count(minimum)(text) == expected


@pytest.mark.parametrize(
    ("minimum", "text", "message"),
    [
        (1, "0", "must be at least 1, got 0"),
        (0, "-1", "must be at least 0, got -1"),
        (1, "1.5", "expected an integer, got '1.5'"),
        (1, "big", "expected an integer, got 'big'"),
        (1, "", "expected an integer, got ''"),
    ],
)
def test_count_refuses_with_the_reason(minimum: int, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        count(minimum)(text)
    assert str(info.value) == message


def test_count_names_its_bound_in_argparse_messages() -> None:
    assert count(2).__name__ == "integer >= 2"


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("auto", None),
        ("cpu", None),
        ("bogus", "--device 'bogus' is not a device; use auto, cpu, cuda, cuda:<index> or mps"),
        ("cuda", "--device cuda: no CUDA GPU is available (use cpu or auto)"),
        ("cuda:0", "--device cuda:0: no CUDA GPU is available (use cpu or auto)"),
        ("mps", "--device mps: MPS is not available (use cpu or auto)"),
        ("meta", "--device meta: unsupported device type 'meta'; use auto, cpu, cuda, cuda:<index> or mps"),
    ],
)
def test_device_problem_without_an_accelerator(name: str, message: str | None, no_accelerator: None) -> None:
    assert device_problem(name) == message


def test_device_problem_counts_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert device_problem("cuda") is None and device_problem("cuda:2") is None
    assert device_problem("cuda:3") == "--device cuda:3: there are 3 CUDA device(s), numbered from 0"


def test_writable_file_problem(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    assert writable_file_problem(tmp_path / "report.json", "--json") is None
    assert writable_file_problem(tmp_path / "new" / "deeper" / "report.json", "--json") is None  # created on write
    assert not (tmp_path / "new").exists()
    assert writable_file_problem(tmp_path, "--out") == f"--out {tmp_path} is a folder; give a file name"
    assert writable_file_problem(tmp_path / "a-file" / "r.json", "--json") == (
        f"--json {tmp_path / 'a-file' / 'r.json'}: {tmp_path / 'a-file'} is not a folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the probe file is gone


def test_writable_file_problem_where_nothing_can_be_written() -> None:
    """/proc refuses new files even to root (a read-only folder would not: CI runs as root)."""
    problem = writable_file_problem(Path("/proc/diablo-report.json"), "--json")
    assert problem is not None and "cannot write in /proc" in problem


def test_one_line() -> None:
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert one_line(FileNotFoundError()) == "FileNotFoundError"
    worker = RuntimeError(
        "Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "diablo.data.image.UnreadableImageError: cannot read image /d/class1/0.png (gone)"
    )
    assert one_line(worker) == "cannot read image /d/class1/0.png (gone)"


def test_fail_prints_one_line_and_returns_1(capsys: pytest.CaptureFixture) -> None:
    assert fail("python -m diablo.x", "cannot read\n  f.json") == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "python -m diablo.x: error: cannot read f.json\n"


def test_the_commands_share_these_definitions() -> None:
    assert evaluate.device_problem is arguments.device_problem
    assert isinstance(evaluate._parser(), Parser)
    assert isinstance(gallery_commands.parser(), Parser)
    from diablo import ablate

    assert isinstance(ablate.parser(), Parser)
    assert evaluate.json_problem(Path("/proc/r.json")) == writable_file_problem(Path("/proc/r.json"), "--json")
