"""`python -m diablo.index build | search | info`: a gallery index directory from the command line.

    python -m diablo.index build --checkpoint runs/cub/best.safetensors --dataset cub \
        --root data/CUB_200_2011 --out galleries/cub
    torchrun --nproc_per_node 4 -m diablo.index build ...      (the same flags; each process embeds its shards)
    python -m diablo.index search galleries/cub --image bird.jpg -k 10 [--json]
    python -m diablo.index info galleries/cub [--json]
    python -m diablo.evaluate --index galleries/cub      (its Recall@K, MAP@R and NMI: diablo.evaluate)

`search` embeds the images with the checkpoint the index was built with (its recorded path, or
--checkpoint) and refuses a checkpoint whose digest differs from the one recorded. Bad arguments
end in one line and exit status 2 before any work; files that cannot be read, a refused
checkpoint or a failed build in one line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from diablo.approximate import APPROXIMATE_FROM, KINDS
from diablo.arguments import Parser, count, device_problem, fail, one_line

PROG = "python -m diablo.index"


def parser() -> Parser:
    from diablo.data import DATASETS, SPLITS

    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = sub.add_parser("build", help="embed a dataset split into an index directory")
    b.add_argument("--checkpoint", required=True, help="a diablo .safetensors checkpoint")
    b.add_argument("--dataset", required=True, choices=DATASETS)
    b.add_argument("--root", default=None, help="the dataset's directory")
    splits = sorted({s for names in SPLITS.values() for s in names})
    b.add_argument("--split", default="test", choices=splits, help="the split to index (default: test)")
    b.add_argument("--image-size", type=count(1), default=None,
                   help="default: the checkpoint's training size, else the dataset's")
    b.add_argument("--batch-size", type=count(1), default=64)
    b.add_argument("--float16", action="store_true", help="store the embedding shards as float16")
    b.add_argument("--out", required=True, type=Path, help="the index directory (created; a killed build resumes)")
    b.add_argument("--shard-size", type=count(1), default=None, help="items per shard (default 4096)")
    b.add_argument("--index", dest="kind", choices=KINDS, default="auto",
                   help="faiss index: exact flat, IVF-Flat, or auto (IVF-Flat from --approximate-from items)")
    b.add_argument("--approximate-from", type=count(2), default=APPROXIMATE_FROM,
                   help=f"gallery size from which auto builds IVF-Flat (default {APPROXIMATE_FROM})")
    b.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    b.add_argument("--num-workers", type=count(0), default=0, help="DataLoader worker processes")
    b.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    s = sub.add_parser("search", help="the nearest gallery items of images")
    s.add_argument("directory", type=Path, help="an index directory")
    s.add_argument("--image", action="append", required=True, type=Path, help="a query image (repeatable)")
    s.add_argument("-k", type=count(1), default=10, help="neighbours per image (default 10)")
    s.add_argument("--checkpoint", default=None, help="default: the checkpoint the index records")
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i = sub.add_parser("info", help="describe an index directory")
    i.add_argument("directory", type=Path, help="an index directory")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return p


def _check_usage(p: Parser, args: argparse.Namespace) -> None:
    """The checks argparse cannot do alone; each failure ends in p.error (one line, exit 2)."""
    from diablo.data import SPLITS

    problem = device_problem(args.device) if getattr(args, "device", None) is not None else None
    if problem:
        p.error(problem)
    if args.command == "build" and args.split not in SPLITS[args.dataset]:
        p.error(f"argument --split: {args.split!r} is not a split of {args.dataset} "
                f"(choose from {', '.join(SPLITS[args.dataset])})")


def run_build(args: argparse.Namespace, argv: list[str]) -> int:
    from diablo.gallery_build import DEFAULT_SHARD_SIZE, BuildConflict, build_index

    try:
        outcome = build_index(
            args.checkpoint, args.dataset, args.out, split=args.split, root=args.root, image_size=args.image_size,
            batch_size=args.batch_size, float16=args.float16, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
            device=args.device, num_workers=args.num_workers, kind=args.kind, approximate_from=args.approximate_from,
            overwrite=args.overwrite, progress=not args.quiet, command=shlex.join([*PROG.split(), *argv]),
        )
    except BuildConflict as err:
        print(f"{PROG} build: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as err:
        return fail(PROG, one_line(err))
    if outcome.rank == 0:
        if outcome.status == "up to date":
            print(f"{outcome.directory}: up to date (the same build is there; --overwrite rebuilds it)")
        else:
            print(f"{outcome.directory}: built ({outcome.embedded} shard(s) embedded here, {outcome.reused} reused, "
                  f"{outcome.world} process(es))")
    return 0


def _open(directory: Path) -> Any:
    from diablo.index import open_index

    return open_index(directory)


def run_search(args: argparse.Namespace) -> int:
    import diablo
    from diablo.checkpoint import checkpoint_digest
    from diablo.data import build_transform, open_image

    try:
        index = _open(args.directory)
    except (OSError, ValueError) as err:
        return fail(PROG, one_line(err))
    build = index.build
    checkpoint = args.checkpoint or (build.get("checkpoint") or {}).get("path")
    if not checkpoint:
        print(f"{PROG} search: error: {args.directory} records no checkpoint; pass --checkpoint", file=sys.stderr)
        return 2
    try:
        index.check_checkpoint(checkpoint_digest(checkpoint))
        model, _, meta = diablo.load_checkpoint(checkpoint, args.device)
        size = int(build.get("image_size") or 0) or None
        if size is None:
            from diablo.gallery_build import trained_image_size

            size = trained_image_size(meta) or 256
        transform = build_transform(train=False, image_size=size)
        import torch

        images = torch.stack([transform(open_image(path)) for path in args.image])  # (q, 3, s, s)
        with torch.inference_mode():
            queries = model(images.to(next(model.parameters()).device)).float().cpu().numpy()  # (q, D)
        result = index.search(queries, args.k)
    except (OSError, ValueError, RuntimeError) as err:
        return fail(PROG, one_line(err))
    report = {
        "index": str(args.directory), "checkpoint": str(checkpoint), "k": args.k, "exact": index.exact,
        "queries": [{"image": str(path), "results": [
            {"rank": r + 1, "id": int(i), "similarity": float(s) if math.isfinite(s) else None,
             "label": int(index.labels[i]) if i >= 0 else None,
             "class": index.class_name(int(i)) if i >= 0 else None,
             "path": index.paths[i] if index.paths is not None and i >= 0 else None}
            for r, (i, s) in enumerate(zip(result.ids[q], result.similarities[q], strict=True))]}
            for q, path in enumerate(args.image)],
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    how = "exact" if index.exact else f"approximate, nprobe {index.params.get('nprobe')}"
    for entry in report["queries"]:
        print(f"{entry['image']}: {len(entry['results'])} nearest of {len(index)} in {args.directory} ({how})")
        for hit in entry["results"]:
            sim = "   n/a" if hit["similarity"] is None else f"{hit['similarity']:.4f}"
            print(f"  {hit['rank']:>3}  {sim}  {hit['class'] or '-'}  {hit['path'] or hit['id']}")
    return 0


def describe(index: Any) -> list[str]:
    """The lines of `info`: size, index type and parameters, embeddings, provenance."""
    m, b, p = index.manifest, index.build, index.params
    size = sum(f.stat().st_size for f in Path(index.directory).rglob("*") if f.is_file())
    lines = [f"{index.directory}: diablo gallery index, format version {m.get('version')}",
             f"  items       {len(index)} (D = {index.dim}, {index.num_branches} branch(es))"]
    if index.exact:
        lines.append("  index       flat (exact inner product)")
    else:
        cal = p.get("calibration", {})
        lines.append(f"  index       {index.kind}: nlist {p.get('nlist')}, nprobe {p.get('nprobe')} "
                     f"(recall@{cal.get('k')} {cal.get('recall', float('nan')):.3f} on {cal.get('queries')} gallery "
                     f"queries; target {p.get('recall_target')})")
    stored = m.get("embeddings")
    if stored:
        lines.append(f"  embeddings  {stored.get('dtype')}, {len(stored.get('shards', []))} shard file(s)")
    else:
        lines.append("  embeddings  float32, held by the flat index")
    if b:
        ckpt = b.get("checkpoint") or {}
        lines += [f"  checkpoint  {ckpt.get('path')} (digest {str(ckpt.get('digest'))[:16]})",
                  f"  dataset     {b.get('dataset')}, split {b.get('split')}, root {b.get('root')}, "
                  f"image size {b.get('image_size')}"]
        skipped = b.get("skipped") or []
        shown = ", ".join(skipped[:3]) + (f", and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        lines.append(f"  skipped     {len(skipped)} unreadable file(s)" + (f": {shown}" if skipped else ""))
        lines.append(f"  built       {b.get('created')} by {b.get('world_size')} process(es): {b.get('command')}")
    else:
        lines.append(f"  key         {m.get('key')} (a cache, no build record)")
    lines.append(f"  on disk     {size / 1e6:.1f} MB")
    return lines


def run_info(args: argparse.Namespace) -> int:
    try:
        index = _open(args.directory)
    except (OSError, ValueError) as err:
        return fail(PROG, one_line(err))
    if args.json:
        print(json.dumps(index.manifest, indent=1))
    else:
        print("\n".join(describe(index)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    _check_usage(p, args)
    if args.command == "build":
        return run_build(args, argv)
    if args.command == "search":
        return run_search(args)
    return run_info(args)
