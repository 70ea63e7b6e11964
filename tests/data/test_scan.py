"""The image scan: full decodes in a thread pool, cached by path, mtime and size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diablo.data import scan
from diablo.data.base import ImageDataset
from diablo.data.folder import load_folder
from diablo.data.scan import scan_cache_file, scan_images

from .conftest import write_corrupt, write_image


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the scan decodes, in any order (open_image is wrapped, not replaced)."""
    calls: list[str] = []
    real = scan.open_image

    def counting(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(scan, "open_image", counting)
    return calls


def make_set(root: Path, good: int = 4) -> list[Path]:
    paths = [write_image(root / f"good{i}.png", (30 * i, 0, 0)) for i in range(good)]
    return [*paths, write_corrupt(root / "bad.jpg", "truncated-jpeg"), write_corrupt(root / "empty.png", "zero-bytes")]


def test_unreadable_files_and_reasons(tmp_path: Path) -> None:
    paths = make_set(tmp_path)
    bad = scan_images([*paths, tmp_path / "missing.png", tmp_path])
    assert set(bad) == {str(paths[4]), str(paths[5]), str(tmp_path / "missing.png"), str(tmp_path)}
    assert bad[str(paths[4])].startswith("OSError: image file is truncated")
    assert bad[str(paths[5])] == "UnidentifiedImageError: cannot identify image file"
    assert bad[str(tmp_path / "missing.png")] == "FileNotFoundError: No such file or directory"
    assert bad[str(tmp_path)] == "not a file"
    assert scan_images([]) == {}


def test_a_second_build_decodes_nothing(tmp_path: Path, scan_cache: Path, decodes: list[str]) -> None:
    paths = make_set(tmp_path / "imgs")
    with pytest.warns(RuntimeWarning):
        first = ImageDataset(paths, [0] * len(paths), ["a"])
    assert sorted(decodes) == sorted(map(str, paths))  # every file decoded once
    cache = scan_cache_file(str(tmp_path / "imgs"), scan_cache)
    assert cache.is_file() and cache.parent == scan_cache / "scan"
    decodes.clear()
    with pytest.warns(RuntimeWarning) as record:  # the bad files are still dropped, and still named
        second = ImageDataset(paths, [0] * len(paths), ["a"])
    assert decodes == []
    assert second.paths == first.paths and second.skipped == first.skipped == [str(p) for p in paths[4:]]
    assert second.skip_reasons == first.skip_reasons
    assert "bad.jpg" in str(record[0].message)


def test_cache_file_holds_mtime_size_and_verdict(tmp_path: Path, scan_cache: Path) -> None:
    paths = make_set(tmp_path)
    scan_images(paths)
    data = json.loads(scan_cache_file(str(tmp_path), scan_cache).read_text())
    assert data["header"]["folder"] == str(tmp_path)
    for p in paths:
        st = p.stat()
        mtime, size, verdict = data["files"][p.name]
        assert (mtime, size) == (st.st_mtime_ns, st.st_size)
        assert (verdict is None) == p.name.startswith("good")


def test_a_changed_mtime_or_size_is_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    paths = make_set(tmp_path)
    assert set(scan_images(paths)) == {str(paths[4]), str(paths[5])}
    decodes.clear()
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    write_image(paths[5], (0, 255, 0))  # the empty file now holds an image: a new size
    assert set(scan_images(paths)) == {str(paths[4])}  # the known bad file's verdict comes from the cache
    assert sorted(decodes) == sorted([str(paths[0]), str(paths[5])])
    decodes.clear()
    write_corrupt(paths[1], "truncated-png")  # a good file broken: detected by its new size
    assert str(paths[1]) in scan_images(paths)
    assert decodes == [str(paths[1])]


def test_splits_sharing_a_folder_share_one_cache(tmp_path: Path, decodes: list[str]) -> None:
    for c in ("a", "b", "c", "d"):
        write_image(tmp_path / c / "0.png")
        write_image(tmp_path / c / "1.png")
    load_folder(tmp_path, "train")
    load_folder(tmp_path, "test")
    assert len(decodes) == 8
    decodes.clear()
    load_folder(tmp_path, "train"), load_folder(tmp_path, "test"), load_folder(tmp_path, "all")
    assert decodes == []  # the test split's scan kept the train split's entries


def test_use_cache_false_and_an_unwritable_cache(tmp_path: Path, decodes: list[str]) -> None:
    paths = make_set(tmp_path / "imgs", good=2)
    scan_images(paths, use_cache=False)
    scan_images(paths, use_cache=False)
    assert len(decodes) == 2 * len(paths)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    assert set(scan_images(paths, cache_dir=blocker)) == {str(paths[2]), str(paths[3])}  # no error


def test_other_pillow_version_discards_the_cache(
    tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_set(tmp_path, good=1)
    scan_images(paths)
    decodes.clear()
    monkeypatch.setattr(scan.PIL, "__version__", "0.0.0")
    scan_images(paths)
    assert len(decodes) == len(paths)


def test_progress_bar_only_for_big_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[bool] = []
    real = scan.tqdm

    def spy(*args, **kwargs):
        shown.append(not kwargs.get("disable", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(scan, "tqdm", spy)
    paths = make_set(tmp_path, good=2)
    scan_images(paths, use_cache=False)
    monkeypatch.setattr(scan, "PROGRESS_MIN_FILES", 3)
    scan_images(paths, use_cache=False)
    assert shown == [False, True]
