"""Retrieval quality of the baseline and the four DIABLO variants under one training budget.

    .venv/bin/python benchmarks/quality.py [--datasets synthetic fashion-mnist] [--seeds 0 1 2]
        [--steps 60] [--alphas 1 10 100] [--dictionary-init random] [--out runs/quality]

Per dataset, variant and seed: train from the ImageNet MobileNetV2 (N = 8, binomial deviance,
Adam 1e-4 and 10x for the new layers) for `--steps` class-balanced batches, then Recall@1 and
MAP@R on the unseen test classes. Prints mean and std over seeds. On `synthetic` it also prints
the attention localisation of each variant (seed 0): each dictionary entry's share of attention
mass on the object and on each part, from the part masks, beside the area share (chance).
`--alphas` adds a sweep of alpha for pre-attention + dimension-wise selection on the first
dataset (first seed): R@1, MAP@R and the mean normalised assignment entropy.
`--dictionary-init shared|kmeans` gives every DIABLO dictionary that start. Results are
appended to OUT/results.jsonl, so an interrupted run continues where it stopped.
`--localise CKPT ... [--images 120] [--top-channels 0.1]` only prints the localisation table of trained
checkpoints on `--images` synthetic test images: per dictionary entry its attention mass on the object (channel
mean) and its ratio to chance, the per-channel score (object mass over the entry's top-q channels by spatial
variance, dimension-wise), the share of arg-max assignments it wins (per place, and channel for dimension-wise)
and its mass on each part; then a summary line per checkpoint with the two targets of issue 8
(>= 2 entries at ratio >= 2; no entry above 40 % of the arg-max assignments). Definitions: diablo/localisation.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import diablo
from diablo.config import DICTIONARY_INITS, TrainConfig
from diablo.data import build_transform
from diablo.data.subset import ClassSubset
from diablo.dictionary import effective_start
from diablo.explain import entry_statistics
from diablo.localisation import MAX_SHARE, MIN_ENTRIES, RATIO_TARGET, TOP_CHANNELS, summarise
from diablo.train import train

VARIANTS = {"baseline": ("none", "feature"), "pre-feature": ("pre", "feature"), "post-feature": ("post", "feature"),
            "pre-dimension": ("pre", "dimension"), "post-dimension": ("post", "dimension")}
SETTINGS = {  # per dataset: image size, P x K, images per class kept
    "synthetic": dict(image_size=128, classes_per_batch=8, images_per_class=5, max_per_class=0),
    "fashion-mnist": dict(image_size=64, classes_per_batch=5, images_per_class=8, max_per_class=200),
}


def run(dataset: str, variant: str, seed: int, steps: int, out: Path, alpha: float = 10.0,
        init: str = "random") -> dict:
    attention, selection = VARIANTS[variant]
    init = effective_start(init, attention, selection)
    suffix = "" if init == "random" else f"-{init}"
    config = TrainConfig(dataset=dataset, backbone="mobilenet_v2", pretrained="imagenet", attention=attention,
                         selection=selection, alpha=alpha, dictionary_init=init, loss="binomial", lr=1e-4,
                         new_lr_factor=10.0, epochs=1, steps_per_epoch=steps, seed=seed, workers=1, progress=False,
                         out=str(out / f"{dataset}-{variant}-a{alpha:g}{suffix}-s{seed}"), **SETTINGS[dataset])
    record = train(config)
    return {"dataset": dataset, "variant": variant, "seed": seed, "steps": steps, "alpha": alpha, "init": init,
            "recall@1": record["recall@1"], "map@r": record["map@r"], "out": config.out}


def attention_of(checkpoint: Path, dataset: str = "synthetic", images: int = 240,
                 split: str = "test") -> tuple[torch.Tensor | None, object]:
    """Attention maps (B, N, c, h, w) of a checkpoint on `images` images of `split` spread over the classes (None
    for the baseline), and the subset."""
    model, _, _ = diablo.load_checkpoint(checkpoint, device="cpu")
    data = diablo.load_dataset(dataset, split=split, transform=build_transform(False, SETTINGS[dataset]["image_size"]))
    subset = ClassSubset(data, per_class=max(1, images // len(set(data.labels))))
    x = torch.stack([subset[i][0] for i in range(len(subset))])
    with torch.inference_mode():
        maps = [model.inspect(chunk).attention for chunk in x.split(40)]
    return (None if maps[0] is None else torch.cat(maps)), subset


def print_localisation(name: str, checkpoint: Path, images: int = 120, q: float = TOP_CHANNELS,
                       split: str = "test") -> None:
    """The per-entry table and the summary line of one checkpoint (definitions: diablo.localisation)."""
    attention, subset = attention_of(checkpoint, images=images, split=split)
    if attention is None:
        print(f"\n{name}: no dictionary (baseline), nothing to localise")
        return
    masks = torch.from_numpy(np.stack([subset.dataset.mask(i) for i in subset.indices]))
    s = summarise(attention, masks, list(subset.dataset.part_names), q)
    loc, (b, n, c, h, w) = s.localisation, attention.shape
    kept = f"top {max(1, int(np.ceil(q * c - 1e-9)))} of {c} channels" if c > 1 else "feature-wise: = channel mean"
    print(f"\n{name}: {b} images, {h} x {w} places, c = {c}, N = {n}; object area {100 * loc.area[0]:.1f} %"
          f" (per-channel score: {kept})")
    parts = " ".join(f"{r + '%':>7}" for r in loc.regions[1:])
    print(f"  {'entry':5} {'object%':>7} {'ratio':>6} {'topq%':>6} {'topq-r':>6} {'argmax%':>7}  {parts}")
    print(f"  {'area':5} {100 * loc.area[0]:7.1f} {1:6.2f} {'':6} {'':6} {100 / n:7.1f}  "
          + " ".join(f"{100 * v:7.1f}" for v in loc.area[1:]))
    for e in range(n):
        top = f"{100 * s.top_mass[e]:6.1f} {s.top_ratio[e]:6.2f}" if c > 1 else f"{'-':>6} {'-':>6}"
        print(f"  e{e:<4} {100 * loc.mass[e, 0]:7.1f} {s.ratio[e]:6.2f} {top} {100 * s.share[e]:7.1f}  "
              + " ".join(f"{100 * v:7.1f}" for v in loc.mass[e, 1:]))
    yes = {True: "MET", False: "not met"}
    top_count = f" (top-q channels: {s.entries_over_top_ratio})" if c > 1 else ""
    print(f"  summary: {s.entries_over_ratio} entries with ratio >= {RATIO_TARGET:g}{top_count}; "
          f"max arg-max share {100 * s.share.max():.1f} %; entropy / log N {s.entropy:.3f} "
          f"(of the arg-max shares {s.share_entropy:.3f}); ratio target (>= {MIN_ENTRIES} entries): "
          f"{yes[s.ratio_target_met]}; share target (<= {100 * MAX_SHARE:g} %): {yes[s.share_target_met]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--alphas", nargs="*", type=float, default=[])
    p.add_argument("--dictionary-init", default="random", choices=DICTIONARY_INITS)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--localise", nargs="+", type=Path, help="only the localisation of these checkpoints")
    p.add_argument("--images", type=int, default=120, help="images for the localisation (spread over classes)")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="whose images --localise uses (train: to choose a recipe without the test classes)")
    p.add_argument("--top-channels", type=float, default=TOP_CHANNELS,
                   help="q: share of channels per entry for the per-channel score (dimension-wise)")
    args = p.parse_args()
    if args.localise:
        print("$ .venv/bin/python benchmarks/quality.py " + shlex.join(sys.argv[1:]))
        print(f"Attention localisation per dictionary entry on the synthetic {args.split} classes"
              " (diablo.localisation): object% = mass on the object (channel mean), ratio = object% / area%,"
              " topq% / topq-r = the same"
              f" over each entry's top {100 * args.top_channels:g} % channels by spatial variance, argmax% = share"
              " of arg-max assignments won (per place, and channel for dimension-wise), then the mass on each part")
        for path in args.localise:
            print_localisation(path.stem, path, args.images, args.top_channels, args.split)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    # the rows of the start each variant gets from --dictionary-init (random for the baseline, ...)
    start = {v: effective_start(args.dictionary_init, *VARIANTS[v]) for v in VARIANTS}
    done = [r for r in done if r.get("init", "random") == start[r["variant"]]]
    key = lambda r: (r["dataset"], r["variant"], r["seed"], r["steps"], r["alpha"])  # noqa: E731
    seen = {key(r) for r in done}
    jobs = [(d, v, s, 10.0) for d in args.datasets for s in args.seeds for v in args.variants]
    jobs += [(args.datasets[0], "pre-dimension", args.seeds[0], a) for a in args.alphas]
    for dataset, variant, seed, alpha in jobs:
        if (dataset, variant, seed, args.steps, alpha) in seen:
            continue
        result = run(dataset, variant, seed, args.steps, out, alpha, args.dictionary_init)
        print(json.dumps(result), file=sys.stderr, flush=True)
        done.append(result)
        with open(log, "a") as file:
            file.write(json.dumps(result) + "\n")

    print("$ .venv/bin/python benchmarks/quality.py " + shlex.join(sys.argv[1:]))
    print(f"\nRetrieval on unseen classes, {args.steps} steps, MobileNetV2, N = 8, {args.dictionary_init} dictionary,"
          " mean ± std over seeds")
    print(f"{'dataset':14} {'variant':15} {'seeds':>5} {'R@1':>14} {'MAP@R':>14}")
    for dataset in args.datasets:
        for variant in args.variants:
            rows = [r for r in done if (r["dataset"], r["variant"], r["steps"], r["alpha"]) ==
                    (dataset, variant, args.steps, 10.0) and r["seed"] in args.seeds]
            if rows:
                r1, mapr = (np.array([r[k] for r in rows]) * 100 for k in ("recall@1", "map@r"))
                print(f"{dataset:14} {variant:15} {len(rows):5d} {r1.mean():8.1f} ± {r1.std():3.1f}"
                      f" {mapr.mean():8.1f} ± {mapr.std():3.1f}")

    if "synthetic" in args.datasets:
        print(f"\nAttention mass share (%) per dictionary entry on the synthetic test classes, seed {args.seeds[0]}")
        for variant in [v for v in args.variants if v != "baseline"]:
            row = next((r for r in done if (r["dataset"], r["variant"], r["seed"], r["steps"], r["alpha"]) ==
                        ("synthetic", variant, args.seeds[0], args.steps, 10.0)), None)
            if row is None:
                continue
            print_localisation(variant, Path(row["out"]) / "last.safetensors", args.images, args.top_channels)

    sweep = [r for r in done if (r["dataset"], r["variant"], r["steps"], r["seed"]) ==
             (args.datasets[0], "pre-dimension", args.steps, args.seeds[0]) and r["alpha"] in {*args.alphas, 10.0}]
    if args.alphas and sweep:
        print(f"\nalpha sweep, {args.datasets[0]}, pre-attention + dimension-wise, seed", args.seeds[0])
        print(f"{'alpha':>6} {'R@1':>6} {'MAP@R':>6} {'entropy/log N':>14}")
        for r in sorted(sweep, key=lambda r: r["alpha"]):
            attention, _ = attention_of(Path(r["out"]) / "last.safetensors", args.datasets[0], images=120)
            entropy = entry_statistics(attention)["entropy_normalised"]
            print(f"{r['alpha']:6g} {100 * r['recall@1']:6.1f} {100 * r['map@r']:6.1f} {entropy:14.3f}")


if __name__ == "__main__":
    main()
