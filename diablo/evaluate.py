"""`python -m diablo.evaluate`: Recall@K, MAP@R and NMI of a checkpoint on a test split, or of a built gallery index.

    python -m diablo.evaluate --checkpoint runs/cub/best.safetensors --dataset cub --root data/CUB_200_2011
    python -m diablo.evaluate --index galleries/cub [--checkpoint runs/cub/best.safetensors]

The K list is the dataset's (paper §5). Leave-one-out over the split, except In-Shop, whose
"query" split searches its "gallery" split. Images are resized to --image-size, by default the
size the checkpoint was trained at (else the dataset's default). Unreadable image files are left
out (never replaced by another image); the report gives how many images were evaluated, how many
files were skipped and how many queries had no positive (counted as misses). --json OUT also
writes the report as JSON.

--index DIR scores a gallery index that `python -m diablo.index build` wrote, without embedding
anything: leave-one-out over the indexed split, with the dataset, split, image size and skipped
files of the index's build record (a flag that contradicts it is refused). An exact (flat) index
is scored exactly (`diablo.evaluation.evaluate` on its stored embeddings, the same figures as
embedding the split again); an approximate (IVF-Flat) one through its own search, so the report
says "approximate" and gives Recall@K and MAP@R of what that search returns (`index_metrics`).
--checkpoint is optional there; when given, a checkpoint that holds another model than the one
the index records (`diablo.checkpoint.checkpoint_digest`) is refused.

Bad arguments end in one line and exit status 2, before any work (with --index: once the index's
manifest is read); a checkpoint, dataset or index that cannot be read, or a refused checkpoint, in
one line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diablo.arguments import Parser, count, device_problem, fail, one_line, writable_file_problem
from diablo.data import DATASETS, SPLITS

__all__ = [
    "device_problem",
    "format_table",
    "index_conflict",
    "index_metrics",
    "json_problem",
    "main",
    "run",
    "run_index",
    "trained_image_size",
]

PROG = "python -m diablo.evaluate"

_ALL_SPLITS = tuple(sorted({s for splits in SPLITS.values() for s in splits} | {"test"}))
# Embedding settings: their defaults, applied when the flag is not given. None of them applies to
# --index, where nothing is embedded.
_EMBEDDING_DEFAULTS = {"batch_size": 64, "num_workers": 0, "device": "auto"}
_SEARCH_RESULTS = 1 << 22  # neighbours (queries x k) held at once when scoring an approximate index


def _parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a diablo .safetensors checkpoint (with --index: optional, checked against the one the index records)",
    )
    parser.add_argument(
        "--dataset", default=None, choices=DATASETS, help="the dataset to search (with --index: the index's)"
    )
    parser.add_argument(
        "--index",
        type=Path,
        default=None,
        metavar="DIR",
        help="score this gallery index (python -m diablo.index build) instead of embedding a split",
    )
    parser.add_argument("--root", default=None, help="the dataset's directory")
    parser.add_argument(
        "--split",
        default=None,
        choices=_ALL_SPLITS,
        help="the split to search, leave-one-out (default: test); In-Shop's 'test' is its query split searching "
        "its gallery (per dataset: " + "; ".join(f"{d}: {', '.join(s)}" for d, s in SPLITS.items()) + ")",
    )
    parser.add_argument(
        "--image-size",
        type=count(1),
        default=None,
        help="test images are resized to this (default: the checkpoint's training size, else the dataset's)",
    )
    parser.add_argument(
        "--batch-size", type=count(1), default=None, help="images embedded at a time (>= 1, default 64)"
    )
    parser.add_argument(
        "--num-workers", type=count(0), default=None, help="DataLoader worker processes (>= 0, default 0)"
    )
    parser.add_argument("--device", default=None, help="auto (cuda, mps, cpu; the default), cpu, cuda, cuda:1, mps")
    parser.add_argument("--no-nmi", action="store_true", help="skip the k-means of NMI (slow for SOP)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def json_problem(path: Path) -> str | None:
    """Why the report cannot be written to `path` (one line), or None (`writable_file_problem`)."""
    return writable_file_problem(path, "--json")


def _check(parser: Parser, args: argparse.Namespace) -> None:
    """The checks argparse cannot do alone, then the embedding defaults filled in; each failure
    ends in parser.error (one line, exit 2)."""
    if args.index is not None:
        for name in _EMBEDDING_DEFAULTS:
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                parser.error(f"argument {flag}: nothing is embedded with --index (the index holds the embeddings)")
    else:
        needed = (("--checkpoint", args.checkpoint), ("--dataset", args.dataset))
        missing = [flag for flag, value in needed if not value]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or --index DIR)")
        args.split = args.split or "test"
        allowed = (*SPLITS[args.dataset], "test") if args.dataset == "inshop" else SPLITS[args.dataset]
        if args.split not in allowed:
            choose = ", ".join(allowed)
            parser.error(f"argument --split: {args.split!r} is not a split of {args.dataset} (choose from {choose})")
        for name, default in _EMBEDDING_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    for problem in (
        device_problem(args.device) if args.device is not None else None,
        json_problem(args.json) if args.json is not None else None,
    ):
        if problem:
            parser.error(problem)


def index_conflict(args: argparse.Namespace, build: dict[str, Any]) -> str | None:
    """Why --dataset, --split, --root or --image-size contradict an index's build record (one
    line), or None; a flag left out takes the recorded value."""
    recorded_root = build.get("root")
    given_root = None if args.root is None else str(Path(args.root).expanduser().resolve())
    for flag, given, recorded in (
        ("--dataset", args.dataset, build.get("dataset")),
        ("--split", args.split, build.get("split")),
        ("--root", given_root, recorded_root),
        ("--image-size", args.image_size, build.get("image_size")),
    ):
        if given is not None and given != recorded:
            return (
                f"argument {flag}: {args.index} was built with {flag} {recorded}, not {given} "
                f"(--index scores the split its build embedded; leave {flag} out)"
            )
    return None


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


def _json_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    return {name: (None if math.isnan(value) else value) for name, value in metrics.items()}


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
        "metrics": _json_metrics(metrics),
    }


def index_metrics(index: Any, ks: Iterable[int], with_nmi: bool = True) -> dict[str, float]:
    """{"recall@K": .., "map@r": .., "nmi": ..} of a gallery index (`diablo.index.GalleryIndex`),
    leave-one-out over its items, as `diablo.evaluation.evaluate` names them.

    Exact index: `diablo.evaluation.evaluate` on its embeddings. Approximate index: each item
    searches the index (`diablo.index.ranked_search`, its own id left out) for its top
    max(K, R) and is scored on what comes back, so an item the search does not return counts
    as absent: Recall@K is whether a same-class item is in the returned top K, MAP@R the
    precision over the returned top R (R = the other items of its class). NMI clusters the
    stored embeddings either way.
    """
    from diablo.evaluation import evaluate, nmi
    from diablo.index import ranked_search
    from diablo.ranking import average_precision_at_r  # MAP@R's one definition

    if index.exact:
        return evaluate(index.embeddings, index.labels, ks, with_nmi=with_nmi)
    ks = [int(kk) for kk in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    labels = np.asarray(index.labels, dtype=np.int64)  # (n,)
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    r = counts[np.searchsorted(classes, labels)] - 1  # (n,) other items of each item's class
    k = max(max(ks), int(r.max()))
    hits = {kk: np.zeros(n, dtype=bool) for kk in ks}
    ap = np.full(n, np.nan)
    chunk = max(1, _SEARCH_RESULTS // max(k, 1))
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))  # (c,)
        ids, _ = ranked_search(index.index, index.rows(rows), k, exclude=rows)  # (c, k'), k' = min(k, n - 1)
        relevant = (ids >= 0) & (labels[np.maximum(ids, 0)] == labels[rows, None])  # (c, k')
        for kk in ks:
            hits[kk][rows] = relevant[:, :kk].any(axis=1)
        ap[rows] = average_precision_at_r(relevant, r[rows])
    metrics = {f"recall@{kk}": float(hit.mean()) for kk, hit in hits.items()}
    valid = ap[~np.isnan(ap)]
    metrics["map@r"] = float(valid.mean()) if valid.size else math.nan
    if with_nmi:
        metrics["nmi"] = nmi(index.embeddings, labels)
    return metrics


def run_index(args: argparse.Namespace, index: Any) -> dict[str, Any]:
    """Score an opened gallery index (`diablo.index.BuiltIndex` with a build record) without
    embedding: checks --checkpoint against the recorded digest first (ValueError, one line).
    Returns the report written as JSON: a normal evaluation's, plus the index and its search."""
    from diablo.data import k_list
    from diablo.evaluation import without_positive

    build = index.build
    if args.checkpoint is not None:
        from diablo.checkpoint import checkpoint_digest

        index.check_checkpoint(checkpoint_digest(args.checkpoint))
    split = str(build.get("split"))
    skipped = [str(p) for p in build.get("skipped") or []]
    metrics = index_metrics(index, k_list(str(build.get("dataset"))), with_nmi=not args.no_nmi)
    return {
        "checkpoint": str(args.checkpoint or (build.get("checkpoint") or {}).get("path")),
        "index": str(args.index),
        "search": "exact" if index.exact else "approximate",
        "index_params": dict(index.params),
        "dataset": build.get("dataset"),
        "split": split,
        "image_size": build.get("image_size"),
        "sizes": {split: len(index)},
        "skipped": {split: len(skipped)},
        "skipped_files": {split: skipped},
        "without_positive": without_positive(index.labels),
        "metrics": _json_metrics(metrics),
    }


def _plural(n: int, word: str, words: str) -> str:
    return f"{n} {word if n == 1 else words}"


def _search_line(report: dict[str, Any]) -> str:
    """The second line of an index's table: how its items were searched."""
    if report["search"] == "exact":
        return f"  search       exact (the index's stored embeddings; built with {report['checkpoint']})"
    params = report.get("index_params") or {}
    calibration = params.get("calibration") or {}
    measured = calibration.get("recall")
    recall = (
        "" if measured is None else (f"; recall@{calibration.get('k')} {measured:.3f} against exact search when built")
    )
    return (
        f"  search       approximate: the index's {params.get('type')} search, nprobe {params.get('nprobe')} of "
        f"{params.get('nlist')} lists{recall}; the metrics are those of its results"
    )


def format_table(report: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table, in percent, under a line that gives the images
    evaluated, the files skipped and the queries without a positive (and, for an index, a line
    saying whether its search is exact or approximate)."""
    sizes = " + ".join(f"{n} {split}" for split, n in report["sizes"].items())
    skipped = sum(report.get("skipped", {}).values())
    missing = report.get("without_positive", 0)
    lines = [
        f"{report.get('index') or report['checkpoint']} on {report['dataset']}: {sizes} images evaluated, "
        f"{_plural(skipped, 'unreadable file', 'unreadable files')} skipped, "
        f"{_plural(missing, 'query', 'queries')} without a positive"
    ]
    if report.get("index"):
        lines.append(_search_line(report))
    for name, value in report["metrics"].items():
        label = name.replace("recall", "Recall").replace("map@r", "MAP@R").replace("nmi", "NMI")
        lines.append(f"  {label:<12} {'n/a' if value is None else f'{100 * value:6.2f}'}")
    return "\n".join(lines)


def _evaluate_index(parser: Parser, args: argparse.Namespace) -> dict[str, Any] | int:
    """--index: open the index (exit 1 if unreadable or not a build), check the flags against its
    build record (exit 2), score it; the report, or an exit status."""
    from diablo.index import open_index

    try:
        index = open_index(args.index)
    except (OSError, ValueError) as err:
        return fail(PROG, one_line(err))
    if not index.build:
        return fail(
            PROG,
            f"{args.index} records no build (a cache of the lab?): --index scores an index "
            "written by python -m diablo.index build",
        )
    problem = index_conflict(args, index.build)
    if problem:
        parser.error(problem)
    try:
        return run_index(args, index)
    except (OSError, ValueError) as err:  # a missing or refused checkpoint, unreadable shards
        return fail(PROG, one_line(err))


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the report is out, 1 when the checkpoint, the dataset, the index or
    the JSON file cannot be read or written (or the checkpoint is not the index's); bad arguments
    raise SystemExit(2) before any work."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.index is not None:
        report = _evaluate_index(parser, args)
        if isinstance(report, int):
            return report
    else:
        try:
            report = run(args)
        except (OSError, ValueError) as err:  # FileNotFoundError, UnreadableImageError, bad files
            return fail(PROG, one_line(err))
    print(format_table(report))
    if args.json is not None:
        from diablo.files import atomic_write

        text = json.dumps(report, indent=2) + "\n"
        try:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError as err:
            return fail(PROG, f"cannot write {args.json}: {one_line(err)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
