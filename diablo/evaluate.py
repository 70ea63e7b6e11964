"""`python -m diablo.evaluate`: Recall@K, MAP@R and NMI of a checkpoint on a dataset's test split.

    python -m diablo.evaluate --checkpoint runs/cub/best.safetensors --dataset cub --root data/CUB_200_2011

The K list is the dataset's (paper §5). Leave-one-out over the split, except In-Shop, whose
"query" split searches its "gallery" split. Images are resized to --image-size, by default the
size the checkpoint was trained at (else the dataset's default). --json OUT also writes the
metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diablo.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a diablo .safetensors checkpoint")
    parser.add_argument("--dataset", required=True, help="cub, cars, sop, inshop, synthetic, folder")
    parser.add_argument("--root", default=None, help="the dataset's directory")
    parser.add_argument("--split", default="test", help="the split to search (In-Shop: query vs gallery)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="test images are resized to this (default: the checkpoint's training size, else the dataset's)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-nmi", action="store_true", help="skip the k-means of NMI (slow for SOP)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def trained_image_size(meta: Any) -> int | None:
    """The image size a checkpoint was trained at (its meta's train_config), None if unrecorded."""
    train = meta.get("train_config") if isinstance(meta, dict) else None
    size = train.get("image_size") if isinstance(train, dict) else None
    return int(size) if size else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, embed, score; returns the report written as JSON."""
    import diablo
    from diablo.data import default_image_size, k_list
    from diablo.evaluation import embed, evaluate

    model, _cfg, meta = diablo.load_checkpoint(args.checkpoint, args.device)
    ks = k_list(args.dataset)
    image_size = args.image_size or trained_image_size(meta) or default_image_size(args.dataset)
    options = {"root": args.root, "image_size": image_size}
    progress = not args.quiet

    def embed_split(split: str) -> tuple[Any, Any, int]:
        dataset = diablo.load_dataset(args.dataset, split=split, **options)
        emb, labels = embed(model, dataset, args.batch_size, num_workers=args.num_workers, progress=progress)
        return emb, labels, len(labels)

    if args.dataset == "inshop" and args.split == "test":
        q, q_labels, n_query = embed_split("query")
        g, g_labels, n_gallery = embed_split("gallery")
        metrics = evaluate(q, q_labels, ks, gallery=g, gallery_labels=g_labels, with_nmi=not args.no_nmi)
        sizes = {"query": n_query, "gallery": n_gallery}
    else:
        emb, labels, n = embed_split(args.split)
        metrics = evaluate(emb, labels, ks, with_nmi=not args.no_nmi)
        sizes = {args.split: n}
    return {
        "checkpoint": str(args.checkpoint),
        "dataset": args.dataset,
        "split": args.split,
        "image_size": image_size,
        "sizes": sizes,
        "metrics": {name: (None if math.isnan(value) else value) for name, value in metrics.items()},
    }


def format_table(report: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table, in percent."""
    sizes = ", ".join(f"{n} {split}" for split, n in report["sizes"].items())
    lines = [f"{report['checkpoint']} on {report['dataset']} ({sizes} images)"]
    for name, value in report["metrics"].items():
        label = name.replace("recall", "Recall").replace("map@r", "MAP@R").replace("nmi", "NMI")
        lines.append(f"  {label:<12} {'n/a' if value is None else f'{100 * value:6.2f}'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
