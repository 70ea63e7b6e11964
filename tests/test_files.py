"""Atomic writes: the content lands, permissions follow the umask, a failure keeps the old file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diablo.files import atomic_write, atomic_write_bytes


def test_content_is_written_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.bin"  # the folder is created
    assert atomic_write_bytes(path, b"one") == path
    assert path.read_bytes() == b"one"
    assert atomic_write(str(path), lambda tmp: Path(tmp).write_text("two")) == path
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["a.bin"]


def test_the_temporary_file_sits_beside_the_target(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        Path(tmp).write_bytes(b"x")

    atomic_write(tmp_path / "m.npy", write)
    assert Path(seen[0]).parent == tmp_path
    assert Path(seen[0]).name.startswith(".m.npy.") and seen[0].endswith(".tmp")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_permissions_follow_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        path = atomic_write_bytes(tmp_path / "f", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failure_in_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "f.json", b"old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]

    def interrupted(tmp: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.json", interrupted)
    assert os.listdir(tmp_path) == ["f.json"]  # no new file either
