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
`--localise CKPT ...` only prints the localisation table of trained checkpoints.
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
from diablo.localisation import localise
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


def attention_of(checkpoint: Path, dataset: str = "synthetic", images: int = 240) -> tuple[torch.Tensor, object]:
    """Attention maps of a checkpoint on `images` test images spread over the classes, and the subset."""
    model, _, _ = diablo.load_checkpoint(checkpoint, device="cpu")
    data = diablo.load_dataset(dataset, split="test", transform=build_transform(False, SETTINGS[dataset]["image_size"]))
    subset = ClassSubset(data, per_class=max(1, images // len(set(data.labels))))
    x = torch.stack([subset[i][0] for i in range(len(subset))])
    with torch.inference_mode():
        attention = torch.cat([model.inspect(chunk).attention for chunk in x.split(40)])
    return attention, subset


def print_localisation(name: str, checkpoint: Path) -> None:
    attention, subset = attention_of(checkpoint)
    masks = torch.from_numpy(np.stack([subset.dataset.mask(i) for i in subset.indices]))
    loc = localise(attention, masks, list(subset.dataset.part_names))
    print(f"\n{name}: " + " ".join(f"{region:>7}" for region in loc.regions))
    print("  area  " + " ".join(f"{100 * v:7.1f}" for v in loc.area))
    for n, shares in enumerate(loc.mass):
        print(f"  e{n:<4} " + " ".join(f"{100 * v:7.1f}" for v in shares))


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
    args = p.parse_args()
    if args.localise:
        print("$ .venv/bin/python benchmarks/quality.py " + shlex.join(sys.argv[1:]))
        print("Attention mass share (%) per dictionary entry on the synthetic test classes")
        for path in args.localise:
            print_localisation(path.stem, path)
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
            print_localisation(variant, Path(row["out"]) / "last.safetensors")

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
