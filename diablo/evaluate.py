"""`python -m diablo.evaluate`: Recall@K, MAP@R and NMI of a checkpoint on a dataset's test split.

    python -m diablo.evaluate --checkpoint runs/cub/best.safetensors --dataset cub --root data/CUB_200_2011

The K list is the dataset's (paper §5). Leave-one-out over the split, except In-Shop, whose
"query" split searches its "gallery" split. Images are resized to --image-size, by default the
size the checkpoint was trained at (else the dataset's default). Unreadable image files are left
out (never replaced by another image); the report gives how many images were evaluated, how many
files were skipped and how many queries had no positive (counted as misses). --json OUT also
writes the report as JSON. Bad arguments end in one line and exit status 2, before any work;
a checkpoint or dataset that cannot be read in one line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from diablo.data import DATASETS, SPLITS

__all__ = ["device_problem", "format_table", "json_problem", "main", "run", "trained_image_size"]

PROG = "python -m diablo.evaluate"

_ALL_SPLITS = tuple(sorted({s for splits in SPLITS.values() for s in splits} | {"test"}))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `PROG: error: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(minimum: int) -> Callable[[str], int]:
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


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a diablo .safetensors checkpoint")
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="the dataset to search")
    parser.add_argument("--root", default=None, help="the dataset's directory")
    parser.add_argument(
        "--split",
        default="test",
        choices=_ALL_SPLITS,
        help="the split to search, leave-one-out; In-Shop's 'test' is its query split searching its gallery "
        "(per dataset: " + "; ".join(f"{d}: {', '.join(s)}" for d, s in SPLITS.items()) + ")",
    )
    parser.add_argument(
        "--image-size",
        type=_count(1),
        default=None,
        help="test images are resized to this (default: the checkpoint's training size, else the dataset's)",
    )
    parser.add_argument("--batch-size", type=_count(1), default=64, help="images embedded at a time (>= 1)")
    parser.add_argument("--num-workers", type=_count(0), default=0, help="DataLoader worker processes (>= 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--no-nmi", action="store_true", help="skip the k-means of NMI (slow for SOP)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def device_problem(name: str) -> str | None:
    """Why `--device name` cannot be used here (one line), or None: "auto", or cpu / cuda[:i] /
    mps when that device exists."""
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
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"--device {name}: there are {count} CUDA device(s), numbered from 0"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else f"--device {name}: MPS is not available (use cpu or auto)"
    return f"--device {name}: unsupported device type {device.type!r}; use auto, cpu, cuda, cuda:<index> or mps"


def json_problem(path: Path) -> str | None:
    """Why the report cannot be written to `path` (one line), or None. Checked by creating and
    removing a temporary file in the nearest existing folder above it (missing folders are
    created when the report is written)."""
    if path.is_dir():
        return f"--json {path} is a folder; give a file name"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"--json {path}: {folder} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".diablo-evaluate-", suffix=".tmp")
    except OSError as err:
        return f"--json {path}: cannot write in {folder} ({err.strerror or err})"
    os.close(fd)
    os.unlink(tmp)
    return None


def _check(parser: _Parser, args: argparse.Namespace) -> None:
    """The checks argparse cannot do alone; each failure ends in parser.error (one line, exit 2)."""
    allowed = (*SPLITS[args.dataset], "test") if args.dataset == "inshop" else SPLITS[args.dataset]
    if args.split not in allowed:
        choose = ", ".join(allowed)
        parser.error(f"argument --split: {args.split!r} is not a split of {args.dataset} (choose from {choose})")
    for problem in (device_problem(args.device), json_problem(args.json) if args.json is not None else None):
        if problem:
            parser.error(problem)


def trained_image_size(meta: Any) -> int | None:
    """The image size a checkpoint was trained at (its meta's train_config), None if unrecorded."""
    train = meta.get("train_config") if isinstance(meta, dict) else None
    size = train.get("image_size") if isinstance(train, dict) else None
    return int(size) if size else None


def _load_quietly(load: Any, *args: Any, **kwargs: Any) -> Any:
    """`load(...)`, its warnings (e.g. the unreadable files it dropped) printed one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load(*args, **kwargs)
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, embed, score; returns the report written as JSON."""
    import diablo
    from diablo.data import default_image_size, k_list
    from diablo.evaluation import embed, evaluate, without_positive

    model, _cfg, meta = diablo.load_checkpoint(args.checkpoint, args.device)
    ks = k_list(args.dataset)
    image_size = args.image_size or trained_image_size(meta) or default_image_size(args.dataset)
    options = {"root": args.root, "image_size": image_size}
    progress = not args.quiet
    sizes: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}

    def embed_split(split: str) -> tuple[Any, Any]:
        dataset = _load_quietly(diablo.load_dataset, args.dataset, split=split, **options)
        emb, labels = embed(model, dataset, args.batch_size, num_workers=args.num_workers, progress=progress)
        sizes[split] = len(labels)
        skipped[split] = [str(p) for p in getattr(dataset, "skipped", [])]
        return emb, labels

    if args.dataset == "inshop" and args.split == "test":
        q, q_labels = embed_split("query")
        g, g_labels = embed_split("gallery")
        metrics = evaluate(q, q_labels, ks, gallery=g, gallery_labels=g_labels, with_nmi=not args.no_nmi)
        missing = without_positive(q_labels, g_labels)
    else:
        emb, labels = embed_split(args.split)
        metrics = evaluate(emb, labels, ks, with_nmi=not args.no_nmi)
        missing = without_positive(labels)
    return {
        "checkpoint": str(args.checkpoint),
        "dataset": args.dataset,
        "split": args.split,
        "image_size": image_size,
        "sizes": sizes,
        "skipped": {split: len(files) for split, files in skipped.items()},
        "skipped_files": skipped,
        "without_positive": missing,
        "metrics": {name: (None if math.isnan(value) else value) for name, value in metrics.items()},
    }


def _plural(n: int, word: str, words: str) -> str:
    return f"{n} {word if n == 1 else words}"


def format_table(report: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table, in percent, under a line that gives the images
    evaluated, the files skipped and the queries without a positive."""
    sizes = " + ".join(f"{n} {split}" for split, n in report["sizes"].items())
    skipped = sum(report.get("skipped", {}).values())
    missing = report.get("without_positive", 0)
    lines = [
        f"{report['checkpoint']} on {report['dataset']}: {sizes} images evaluated, "
        f"{_plural(skipped, 'unreadable file', 'unreadable files')} skipped, "
        f"{_plural(missing, 'query', 'queries')} without a positive"
    ]
    for name, value in report["metrics"].items():
        label = name.replace("recall", "Recall").replace("map@r", "MAP@R").replace("nmi", "NMI")
        lines.append(f"  {label:<12} {'n/a' if value is None else f'{100 * value:6.2f}'}")
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    """The message of `err` on one line; for an error re-raised from a DataLoader worker, the
    original error's last line (its message) rather than the worker's traceback."""
    text = str(err).strip()
    if "Original Traceback" in text:  # the last line is "module.ErrorType: message"
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return " ".join(text.split()) or type(err).__name__


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the report is out, 1 when the checkpoint, the dataset or the JSON
    file cannot be read or written; bad arguments raise SystemExit(2) before any work."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        report = run(args)
    except (OSError, ValueError) as err:  # FileNotFoundError, UnreadableImageError, bad files
        return _error(_one_line(err))
    print(format_table(report))
    if args.json is not None:
        from diablo.files import atomic_write

        text = json.dumps(report, indent=2) + "\n"
        try:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError as err:
            return _error(f"cannot write {args.json}: {_one_line(err)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
