"""Command-line arguments shared by diablo's commands, and their one-line error convention.

`python -m diablo.evaluate`, `python -m diablo.index` and `python -m diablo.ablate` end a bad
command line in one line, `PROG: error: MESSAGE`, with exit status 2 and before any work (`Parser`,
the checks below), and a failure while running (a file that cannot be read or written) in one
line of the same form with exit status 1 (`fail`, `one_line`).

    parser = Parser(prog="python -m diablo.evaluate")
    parser.add_argument("--batch-size", type=count(1), default=64)
    ...
    problem = device_problem(args.device) or writable_file_problem(args.json, "--json")
    if problem:
        parser.error(problem)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

__all__ = ["Parser", "count", "device_problem", "fail", "one_line", "writable_file_problem"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `PROG: error: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum; otherwise argparse's one-line error names the flag,
    e.g. "argument --batch-size: must be at least 1, got 0"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def device_problem(name: str) -> str | None:
    """Why `--device name` cannot be used here (one line), or None: "auto", or cpu / cuda[:i] /
    mps when that device exists."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:<index> or mps"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {name}: no CUDA GPU is available (use cpu or auto)"
        devices = torch.cuda.device_count()
        if device.index is not None and device.index >= devices:
            return f"--device {name}: there are {devices} CUDA device(s), numbered from 0"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else f"--device {name}: MPS is not available (use cpu or auto)"
    return f"--device {name}: unsupported device type {device.type!r}; use auto, cpu, cuda, cuda:<index> or mps"


def writable_file_problem(path: Path, flag: str) -> str | None:
    """Why the file `path` (given with `flag`) cannot be written (one line), or None. Checked by
    creating and removing a temporary file in the nearest existing folder above it (missing
    folders are created when the file is written)."""
    path = Path(path)
    if path.is_dir():
        return f"{flag} {path} is a folder; give a file name"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{flag} {path}: {folder} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".diablo-check-", suffix=".tmp")
    except OSError as err:
        return f"{flag} {path}: cannot write in {folder} ({err.strerror or err})"
    os.close(fd)
    os.unlink(tmp)
    return None


def one_line(err: BaseException) -> str:
    """The message of `err` on one line; for an error re-raised from a DataLoader worker, the
    original error's last line (its message, without the "module.ErrorType: " prefix) rather than
    the worker's traceback."""
    text = str(err).strip()
    if "Original Traceback" in text:  # the last line is "module.ErrorType: message"
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return " ".join(text.split()) or type(err).__name__


def fail(prog: str, message: str) -> int:
    """Print `PROG: error: MESSAGE` on stderr (one line) and return exit status 1."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1
