"""`python -m diablo.protocol`: the model-selection protocol of the paper's §4.2.

For each of S random splits of the training classes into a training and a validation half, train
on the first half, keep the epoch with the best Recall@1 on the validation classes
(DIR/split-SEED/best.safetensors), and measure it on the test split. The result, written to
DIR/protocol.json, is the mean and standard deviation of every test metric over the splits
(the paper's Tables 3 and 4). Every other flag is `python -m diablo.train`'s; a split that has
run all its epochs is not trained again, an interrupted one is resumed. One process: the splits
are independent, so several machines can share them by running the same command with disjoint
`--seed`s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from diablo import train as training
from diablo.checkpoint import load_checkpoint, resolve_device
from diablo.config import TrainConfig
from diablo.files import atomic_write_bytes
from diablo.run_directory import RunDirectory


def split_config(config: TrainConfig, split: int, val_fraction: float) -> TrainConfig:
    """Split `split`'s run: its own class split and initialisation (seed + split), in DIR/split-SEED."""
    seed = config.seed + split
    return config.replace(seed=seed, val_fraction=val_fraction, out=str(Path(config.out) / f"split-{seed}"))


def train_to_end(config: TrainConfig) -> None:
    """Train `config` unless its folder holds a finished run; resume a partly finished one."""
    run = RunDirectory(config.out)
    if not run.holds_run():
        training.train(config)
    elif not training.finished(config, run.recover()):
        training.train(config, resume=True)


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each metric over the splits."""
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in rows[0] if k != "seed"}


def run_protocol(config: TrainConfig, splits: int = 10, val_fraction: float = 0.5) -> dict[str, Any]:
    """Train, select on validation and test each split; returns and writes DIR/protocol.json."""
    if splits < 1 or not 0 < val_fraction < 1:
        raise ValueError(f"need splits >= 1 and 0 < val_fraction < 1, got {splits}, {val_fraction}")
    device = resolve_device(config.device)
    test_queries, test_gallery = training.evaluation_sets(config.replace(val_fraction=0.0))
    rows = []
    for split in tqdm(range(splits), desc="splits", disable=not config.progress):
        run = split_config(config, split, val_fraction)
        train_to_end(run)
        model, _, _ = load_checkpoint(Path(run.out) / "best.safetensors", device=device)
        rows.append({"seed": run.seed, **training.measure(model, test_queries, test_gallery, run, device)})
    result = {"splits": rows, "summary": summarise(rows), "train_config": config.to_dict(),
              "val_fraction": val_fraction}
    atomic_write_bytes(Path(config.out) / "protocol.json", json.dumps(result, indent=1).encode())
    return result


def table(summary: dict[str, dict[str, float]]) -> str:
    """One line per metric: mean ± std in %."""
    return "\n".join(f"{k:<10} {100 * v['mean']:6.2f} ± {100 * v['std']:5.2f}" for k, v in summary.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diablo.protocol", description=__doc__.splitlines()[0],
                                epilog="Every other flag is passed to python -m diablo.train (see its --help).")
    p.add_argument("--splits", type=int, default=10, help="number of random train / validation splits (paper: 10)")
    p.add_argument("--split-fraction", type=float, default=0.5,
                   help="share of the training classes held out for validation (paper: 0.5)")
    args, rest = p.parse_known_args(argv)
    if "--resume" in rest or any(a.startswith("--val-fraction") for a in rest):
        p.error("--resume and --val-fraction are set per split by the protocol; rerun the same command to resume")
    if args.splits < 1 or not 0 < args.split_fraction < 1:
        p.error(f"need --splits >= 1 and 0 < --split-fraction < 1, got {args.splits}, {args.split_fraction}")
    config, _ = training.config_from_args(rest)
    try:
        result = run_protocol(config, args.splits, args.split_fraction)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
