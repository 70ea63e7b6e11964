"""The cache folder: $DIABLO_CACHE, else ~/.cache/diablo."""

from __future__ import annotations

from pathlib import Path

import pytest

from diablo.data.cache import cache_root


def test_environment_variable_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIABLO_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("DIABLO_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "diablo"
    monkeypatch.delenv("DIABLO_CACHE")
    assert cache_root() == tmp_path / "home" / ".cache" / "diablo"
