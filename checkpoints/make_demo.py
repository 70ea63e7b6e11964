"""Train the five bundled demo checkpoints and export them as float16 safetensors.

    .venv/bin/python checkpoints/make_demo.py [--work runs/demo] [--only pre-dimension ...]
    .venv/bin/python checkpoints/make_demo.py --table     # the tables of checkpoints/README.md

Each variant: `python -m diablo.train --preset demo --attention A --selection S --out runs/demo/V`
(synthetic parts, ImageNet MobileNetV2, N = 8, 128 px, 8 x 5 batches, 24 epochs x 25 steps), plus
the variant's dictionary initialisation, chosen on held-out training classes.
A finished run is exported without training it again, a partly finished one is resumed.
The exported checkpoint is the run's *last* epoch (a fixed budget: no model selection on the
test classes), with the test split's Recall@K, MAP@R and NMI under meta["test_metrics"].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import diablo
from diablo import train
from diablo.checkpoint import read_metadata
from diablo.data import k_list
from diablo.protocol import train_to_end

# Per variant: attention, selection, and the flags chosen on held-out training classes
# (`--val-fraction 0.5`; checkpoints/README.md): the dictionary initialisation.
VARIANTS = {
    "baseline": ("none", "feature", []),
    "pre-feature": ("pre", "feature", []),
    "post-feature": ("post", "feature", ["--dictionary-init", "kmeans"]),
    "pre-dimension": ("pre", "dimension", ["--dictionary-init", "shared"]),
    "post-dimension": ("post", "dimension", []),
}
HERE = Path(__file__).resolve().parent
METRICS = (*(f"recall@{k}" for k in k_list("synthetic")), "map@r", "nmi")


def table() -> str:
    """The Markdown tables of checkpoints/README.md, from the exported checkpoints' metadata."""
    rows = ["| checkpoint | size | dictionary | R@1 | R@2 | R@4 | R@8 | MAP@R | NMI | command |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    curves: list[str] = []
    for name in VARIANTS:
        path = HERE / f"demo-{name}.safetensors"
        _, meta = read_metadata(path)
        m = meta["test_metrics"]
        init = "-" if name == "baseline" else meta["train_config"].get("dictionary_init", "random")
        figures = " | ".join(f"{100 * m[k]:.1f}" for k in METRICS)
        size = f"{path.stat().st_size / 1e6:.1f} MB"
        rows.append(f"| `demo-{name}` | {size} | {init} | {figures} | `{meta['command']}` |")
        evaluated = [h for h in meta["history"] if "recall@1" in h]
        if not curves:  # the header: the evaluated epochs of the first checkpoint (epoch 0 = untrained)
            curves = ["| model | " + " | ".join(f"epoch {h['epoch']}" for h in evaluated) + " |",
                      "|---" * (len(evaluated) + 1) + "|"]
        curves.append(f"| {name} | " + " | ".join(f"{100 * h['recall@1']:.1f} / {100 * h['map@r']:.1f}"
                                                   for h in evaluated) + " |")
    return "\n".join(rows) + "\n\nTest Recall@1 / MAP@R along training:\n\n" + "\n".join(curves)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/demo", help="folder of the training runs")
    p.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="train just these variants")
    p.add_argument("--workers", default="1")
    p.add_argument("--table", action="store_true", help="only print the README's tables of the exported checkpoints")
    args = p.parse_args()
    if args.table:
        print(table())
        return
    for name in args.only or VARIANTS:
        attention, selection, chosen = VARIANTS[name]
        out = Path(args.work) / name
        argv = ["--preset", "demo", "--attention", attention, "--selection", selection, *chosen, "--eval-every", "2",
                "--workers", args.workers, "--out", str(out)]
        print("python -m diablo.train " + " ".join(argv), flush=True)
        train_to_end(train.config_from_args(argv)[0])
        model, config, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
        last = meta["history"][-1]
        meta["test_metrics"] = {k: v for k, v in last.items() if k.startswith(("recall@", "map@r", "nmi"))}
        meta["command"] = "python -m diablo.train " + " ".join(argv)
        path = diablo.save_checkpoint(HERE / f"demo-{name}.safetensors", model, config, meta, dtype="float16")
        print(f"{path}: {meta['test_metrics']}", flush=True)


if __name__ == "__main__":
    main()
