"""Which image files of a dataset can be read: each file decoded once per version, in parallel.

Every file is fully decoded with `open_image`, the very call the dataset items use, so a file
that passes the scan is one its item can read. A header check (`PIL.Image.verify`) would be
faster but lets truncated JPEGs through (PIL checks no JPEG data there), and those would fail
mid-run. Decoding runs in a thread pool (PIL releases the GIL while it decodes), and its
result is cached, so only the first build of a dataset pays for it.

Cache: `<cache>/scan/<hash of the folder>.json` (cache: `cache_dir=`, else `$DIABLO_CACHE`,
else `~/.cache/diablo`; see `diablo.data.cache`), one file per folder holding the images (the
deepest folder common to all of them), written atomically. An entry is keyed by the file's path
relative to that folder, its modification time (ns) and its size: a file whose mtime or size
changed is decoded again. A different Pillow version or `PIL.Image.MAX_IMAGE_PIXELS` (which
decides what is refused as a decompression bomb) discards the whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import PIL
from PIL import Image
from tqdm.auto import tqdm

from diablo.data.cache import cache_root
from diablo.data.image import open_image
from diablo.files import atomic_write

__all__ = ["PROGRESS_MIN_FILES", "SCAN_VERSION", "failure_reason", "scan_cache_file", "scan_images"]

SCAN_VERSION = 1
"""The layout of the cache files; another version is ignored (and rewritten)."""

PROGRESS_MIN_FILES = 1000
"""A progress bar is shown when at least this many files have to be decoded."""

_Entry = list[Any]  # [mtime_ns, size, reason or None]


def failure_reason(err: BaseException, path: str) -> str:
    """Why `path` failed, in one line and without its name: "UnidentifiedImageError: cannot
    identify image file", "FileNotFoundError: No such file or directory", ..."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        lines = str(err).replace(repr(path), "").replace(path, "").strip().splitlines()
        text = lines[0].strip(" :") if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _decode(path: str) -> str | None:
    """None if `path` decodes, else why not (one line)."""
    try:
        open_image(path)
    except Exception as err:  # anything a decoder raises makes the file unusable
        return failure_reason(err, path)
    return None


def _folder(paths: Sequence[str]) -> str:
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def scan_cache_file(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file of the images under `folder` (an absolute path)."""
    digest = hashlib.sha256(os.fspath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else cache_root()).expanduser() / "scan" / f"{digest}.json"


def _header(folder: str) -> dict[str, Any]:
    return {"version": SCAN_VERSION, "pillow": PIL.__version__, "max_pixels": Image.MAX_IMAGE_PIXELS, "folder": folder}


def _read_cache(file: Path, header: dict[str, Any]) -> dict[str, _Entry]:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("header") != header or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(file: Path, header: dict[str, Any], entries: dict[str, _Entry]) -> None:
    folder = header["folder"]
    kept = {rel: e for rel, e in entries.items() if os.path.exists(os.path.join(folder, rel))}
    text = json.dumps({"header": header, "files": kept}, separators=(",", ":"))
    try:
        atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError:
        pass  # the cache only saves time; an unwritable cache folder means decoding again next time


def scan_images(
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    desc: str = "scan images",
) -> dict[str, str]:
    """{path: reason} of the files among `paths` that cannot be read (missing, not a file, not
    decodable), keys spelled as given; empty when all of them decode.

    Files not in the cache (or changed since) are decoded by `workers` threads (default: the
    thread pool's, min(32, CPUs + 4)); the results are cached unless `use_cache` is False.
    """
    names = [os.fspath(p) for p in paths]
    if not names:
        return {}
    absolute = [os.path.abspath(p) for p in names]
    folder = _folder(absolute)
    header = _header(folder)
    file = scan_cache_file(folder, cache_dir)
    entries = _read_cache(file, header) if use_cache else {}
    bad: dict[str, str] = {}
    todo: list[tuple[str, str, _Entry]] = []  # (name, relative path, key)
    for name, path in zip(names, absolute, strict=True):
        try:
            st = os.stat(path)
        except OSError as err:
            bad[name] = failure_reason(err, path)
            continue
        if not stat.S_ISREG(st.st_mode):
            bad[name] = "not a file"
            continue
        rel = os.path.relpath(path, folder)
        key = [st.st_mtime_ns, st.st_size]
        entry = entries.get(rel)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == key:
            if entry[2] is not None:
                bad[name] = str(entry[2])
        else:
            todo.append((name, rel, key))
    if not todo:
        return bad
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_decode, [os.path.join(folder, rel) for _, rel, _ in todo])
        bar = tqdm(results, total=len(todo), desc=desc, unit="file", leave=False,
                   disable=len(todo) < PROGRESS_MIN_FILES)  # fmt: skip
        for (name, rel, key), reason in zip(todo, bar, strict=True):
            entries[rel] = [*key, reason]
            if reason is not None:
                bad[name] = reason
    if use_cache:
        _write_cache(file, header, entries)
    return bad
