"""`python -m diablo.ablate`: the paper's ablation tables (§4.3 Table 3, §4.5 Table 4) as one command.

A grid of attention x selection (the four DIABLO variants of Figure 1 and §3.3-3.4, and the
global-pooling baseline, `--attention none`), optionally crossed with lists of N (`--entries`),
alpha, loss and dictionary start (crossed, or one variant's own: `post-feature=kmeans`), each
trained over seeds (`--seeds`, default 0 1 2) or over the train / validation splits of the §4.2
protocol (`--protocol-splits S`). Every other flag is `python -m diablo.train`'s. Each run lives
in OUT/<cell>/seed-<s>; a finished run is not trained again, a partial one is resumed
(diablo.protocol.train_to_end), and a folder that holds a run of other settings is an error.
Written to OUT: ablation.md (mean ± std of R@1 and MAP@R per cell), ablation.json (every run's
numbers), ablation.html (plotly) and ablation.png (only where kaleido is installed and finds a
browser to render with).

Which epoch a run contributes: without validation (`--val-fraction 0`, the default), its final
epoch on the test classes, as the bundled demo checkpoints do; with validation (`--protocol-splits`,
`--val-fraction F`, or `--val-groups G` on the synthetic set), the epoch of best validation
Recall@1, measured on the test classes (§4.2).
The std is the population one (numpy's default, as diablo.protocol). With the CUB settings of the
paper (`--preset cub` or `cub-val`) the table shows the paper's R@1 beside each cell it reports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from diablo import protocol
from diablo import train as training
from diablo.arguments import Parser
from diablo.checkpoint import load_checkpoint, read_metadata, resolve_device
from diablo.config import ATTENTIONS, DICTIONARY_INITS, LOSS_NAMES, SELECTIONS, TrainConfig
from diablo.dictionary import effective_start
from diablo.files import atomic_write_bytes
from diablo.paper_tables import paper_value

PROG = "python -m diablo.ablate"
# Settings that do not change what a run computes: a stored run may differ in them.
UNCOMPARED = frozenset({"out", "root", "progress", "workers", "device", "batch_size_eval", "epochs"})
# ... nor, for the baseline (no dictionary), these: it builds and trains the same network whatever they are.
DICTIONARY_SETTINGS = frozenset({"selection", "num_entries", "alpha", "learn_alpha", "rescale", "dictionary_init",
                                 "dictionary_lr_factor"})
# The cached test metrics of a run selected on validation (next to its best.safetensors).
TEST_CACHE = "test_metrics.json"


class UsageError(ValueError):
    """A bad command line or grid: reported as one line, exit status 2."""


@dataclass(frozen=True)
class Cell:
    """One setting of the grid: its folder name and its TrainConfig (seed, out set per run)."""

    name: str
    config: TrainConfig


# ----------------------------------------------------------------------------- the grid


def cell_name(config: TrainConfig, base: TrainConfig) -> str:
    """'baseline' or '{pre,post}-{feature,dimension}', then every grid setting not the base's
    (e.g. 'post-feature-N16', 'pre-dimension-alpha5-init-shared', 'baseline-triplet')."""
    parts = [config.model_config().variant]
    if config.attention != "none":
        if config.num_entries != base.num_entries:
            parts.append(f"N{config.num_entries}")
        if config.alpha != base.alpha:
            parts.append(f"alpha{config.alpha:g}")
        if config.dictionary_init != base.dictionary_init:
            parts.append(f"init-{config.dictionary_init}")
    if config.loss != base.loss:
        parts.append(config.loss)
    return "-".join(parts)


def _unique(values: list[Any] | None, default: Any) -> list[Any]:
    return list(dict.fromkeys(values)) if values else [default]


def grid(base: TrainConfig, attentions: list[str], selections: list[str], entries: list[int] | None = None,
         alphas: list[float] | None = None, losses: list[str] | None = None,
         inits: list[str] | None = None) -> list[Cell]:
    """The cells, in Table 3's order (baseline, then feature-wise pre / post, dimension-wise pre / post).

    The baseline has no dictionary: one baseline cell per loss, whatever N, alpha and start. A start
    a variant cannot have (`shared` feature-wise) is the one it gets (diablo.dictionary.effective_start),
    so it is not trained twice. An item of `inits` may be `VARIANT=START` (e.g. "post-feature=kmeans"):
    that variant's only start, the other items being crossed with the other variants. Raises
    UsageError for a setting TrainConfig refuses."""
    cells: dict[str, Cell] = {}
    crossed, own = _starts(inits or [])

    def add(**changes: Any) -> None:
        try:
            config = base.replace(**changes)
        except ValueError as error:
            shown = ", ".join(f"{k}={v}" for k, v in changes.items())
            raise UsageError(f"{shown}: {error}") from None
        cells.setdefault(cell_name(config, base), Cell(cell_name(config, base), config))

    attentions = _unique(attentions, "pre")
    for loss in _unique(losses, base.loss):
        if "none" in attentions:
            add(attention="none", loss=loss, dictionary_init=effective_start(base.dictionary_init, "none", ""))
        for selection in _unique(selections, base.selection):
            for attention in (a for a in attentions if a != "none"):
                for n in _unique(entries, base.num_entries):
                    for alpha in _unique(alphas, base.alpha):
                        for init in own.get(f"{attention}-{selection}") or _unique(crossed, base.dictionary_init):
                            add(attention=attention, selection=selection, num_entries=n, alpha=alpha, loss=loss,
                                dictionary_init=effective_start(init, attention, selection))
    return list(cells.values())


def _starts(inits: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`--dictionary-init` items split into the crossed starts and {variant: [start]}."""
    variants = [f"{a}-{s}" for a in ATTENTIONS if a != "none" for s in SELECTIONS]
    crossed: list[str] = []
    own: dict[str, list[str]] = {}
    for item in inits:
        variant, _, start = item.rpartition("=")
        if start not in DICTIONARY_INITS or (variant and variant not in variants):
            raise UsageError(f"--dictionary-init {item}: expected START or VARIANT=START with START one of "
                             f"{', '.join(DICTIONARY_INITS)} and VARIANT one of {', '.join(variants)}")
        if variant:
            own.setdefault(variant, []).append(start)
        else:
            crossed.append(start)
    return crossed, own


def run_config(cell: Cell, seed: int, val_fraction: float, out: Path) -> TrainConfig:
    """The run of `cell` with seed `seed` (its class split too, when validating), in OUT/<cell>/seed-<seed>."""
    return cell.config.replace(seed=seed, val_fraction=val_fraction, out=str(out / cell.name / f"seed-{seed}"))


# ----------------------------------------------------------------------------- runs on disk


def stored_meta(run: TrainConfig) -> dict[str, Any] | None:
    """The metadata of the run's last.safetensors, None when it has none yet."""
    last = Path(run.out) / "last.safetensors"
    return read_metadata(last)[1] if last.exists() else None


def mismatch(run: TrainConfig) -> str | None:
    """Why the run folder cannot hold `run` (another run's settings), or None."""
    meta = stored_meta(run)
    if meta is None:
        return None
    wanted = run.to_dict()
    stored = {**TrainConfig().to_dict(), **meta.get("train_config", {})}  # a field added since: its default
    ignored = UNCOMPARED | (DICTIONARY_SETTINGS if run.attention == "none" else frozenset())
    different = [k for k in wanted if k not in ignored and stored.get(k) != wanted[k]]
    if different:
        shown = ", ".join(f"{k}={stored.get(k)!r} (now {wanted[k]!r})" for k in different[:3])
        return f"{run.out} holds a run with other settings: {shown}; use another --out"
    if int(meta["epoch"]) > run.epochs:
        return f"{run.out} holds {meta['epoch']} epochs, more than --epochs {run.epochs}; use another --out"
    return None


def finished(run: TrainConfig) -> bool:
    """Whether the run folder holds all of `run`'s epochs (or its --max-steps)."""
    meta = stored_meta(run)
    if meta is None:
        return False
    return int(meta["epoch"]) >= run.epochs or bool(run.max_steps and int(meta["step"]) >= run.max_steps)


def _is_metric(key: str, value: Any) -> bool:
    return isinstance(value, float) and (key.startswith("recall@") or key in ("map@r", "nmi"))


def run_metrics(run: TrainConfig, device: Any, test_sets: dict[tuple, Any]) -> dict[str, Any]:
    """The test metrics a finished run contributes: its final epoch's record (no validation), or
    its best validation epoch (best.safetensors) measured on the test classes (§4.2), cached."""
    out = Path(run.out)
    if not run.validates:
        record = stored_meta(run)["history"][-1]
        return {"epoch": record["epoch"], "selected": "final epoch",
                **{k: v for k, v in record.items() if _is_metric(k, v)}}
    best = out / "best.safetensors"
    stat = best.stat()
    epoch = int(read_metadata(best)[1]["epoch"])
    key = {"epoch": epoch, "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
    cache = out / TEST_CACHE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("best") == key:
            return cached["metrics"]
    data_key = (run.dataset, run.root, run.image_size, run.max_per_class)
    if data_key not in test_sets:
        test_sets[data_key] = training.evaluation_sets(run.replace(val_fraction=0.0, val_groups=0))
    queries, gallery = test_sets[data_key]
    model, _, _ = load_checkpoint(best, device=device)
    metrics = {"epoch": epoch, "selected": "best validation epoch",
               **training.measure(model, queries, gallery, run, device)}
    atomic_write_bytes(cache, json.dumps({"best": key, "metrics": metrics}, indent=1).encode())
    return metrics


# ----------------------------------------------------------------------------- results


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and population std of every metric all of a cell's runs report."""
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if _is_metric(k, v) and all(k in r for r in rows)]
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in keys}


def _pm(stats: dict[str, float] | None) -> str:
    if not stats or math.isnan(stats["mean"]):
        return "-"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


SELECTED = {
    "final epoch": "each run's final epoch, on the test classes (no validation; as the bundled demo)",
    "best validation epoch": "each run's epoch of best validation R@1, measured on the test classes (§4.2)",
}
PAPER_NOTE = ("Paper: R@1 of Table 3 (§4.3, N = 8) and Table 4 (§4.5, feature-wise post-attention, N = 2-16) on "
              "CUB-200-2011 (GoogLeNet, 512-d, binomial loss), mean ± std over the 10 splits of §4.2; the paper "
              "states neither alpha nor the dictionary start, and our text of Table 4 has no numbers for "
              "dimension-wise pre-attention at N != 8. Cells the paper does not report show '-'.")


def markdown_table(result: dict[str, Any]) -> str:
    """The Markdown table of `result` (see `ablate`): one line per cell, R@1 and MAP@R in % as
    mean ± std over its runs, and the paper's R@1 (Tables 3, 4) where the paper has the cell."""
    papers = [paper_value(cell["train_config"]) for cell in result["cells"]]
    with_paper = any(p is not None for p in papers)
    head = ["cell", "N", "alpha", "loss", "dictionary", "runs", "R@1 (%)", "MAP@R (%)"]
    head += ["paper R@1 (%)"] if with_paper else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell, paper in zip(result["cells"], papers, strict=True):
        c = cell["train_config"]
        dictionary = c["attention"] != "none"
        row = [cell["name"], str(c["num_entries"]) if dictionary else "-", f"{c['alpha']:g}" if dictionary else "-",
               c["loss"], c["dictionary_init"] if dictionary else "-", str(cell["runs"]),
               _pm(cell["summary"].get("recall@1")), _pm(cell["summary"].get("map@r"))]
        row += [str(paper) if paper else "-"] if with_paper else []
        lines.append("| " + " | ".join(row) + " |")
    seeds = ", ".join(str(s) for s in result["seeds"])
    notes = [f"Mean ± std (population) over the runs (seeds {seeds}) of {SELECTED[result['selected']]}."]
    if result["val_fraction"]:
        notes.append(f"Validation: {result['val_fraction']:g} of the training classes, a split per seed.")
    if result["train_config"].get("val_groups"):
        notes.append(f"Validation: {result['train_config']['val_groups']} further synthetic groups of classes "
                     "(neither train nor test classes).")
    if result["failed"]:
        failed = ", ".join(f"{f['cell']}/seed-{f['seed']}" for f in result["failed"])
        notes.append(f"Failed runs (not counted): {failed}.")
    notes += [PAPER_NOTE] if with_paper else []
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def figure(result: dict[str, Any]) -> Any:
    """A plotly bar chart: R@1 and MAP@R (mean, std as error bars) per cell, the paper's R@1 as points."""
    import plotly.graph_objects as go

    names = [cell["name"] for cell in result["cells"]]
    fig = go.Figure()
    for metric, label in (("recall@1", "R@1"), ("map@r", "MAP@R")):
        stats = [cell["summary"].get(metric, {"mean": math.nan, "std": math.nan}) for cell in result["cells"]]
        fig.add_bar(x=names, y=[100 * s["mean"] for s in stats], name=f"{label} (ours)",
                    error_y={"type": "data", "array": [100 * s["std"] for s in stats]})
    papers = [paper_value(cell["train_config"]) for cell in result["cells"]]
    if any(papers):
        fig.add_scatter(x=names, y=[p.mean if p else None for p in papers], mode="markers", name="R@1 (paper)",
                        marker={"symbol": "diamond", "size": 11, "color": "black"},
                        error_y={"type": "data", "array": [p.std if p else None for p in papers]},
                        text=[p.source if p else "" for p in papers])
    fig.update_layout(barmode="group", yaxis_title="%", template="plotly_white",
                      title=f"{result['train_config']['dataset']}: mean ± std over {len(result['seeds'])} run(s) "
                            f"per cell ({result['selected']})")
    return fig


def write_outputs(out: Path, result: dict[str, Any], plot: bool) -> list[str]:
    """Write OUT/ablation.{json,md}, and with `plot` .html and (with kaleido) .png; returns notes."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "ablation.json", json.dumps(result, indent=1).encode())
    atomic_write_bytes(out / "ablation.md", markdown_table(result).encode())
    if not plot:
        return []
    fig = figure(result)
    atomic_write_bytes(out / "ablation.html", fig.to_html(include_plotlyjs=True, full_html=True).encode())
    if importlib.util.find_spec("kaleido") is None:
        return ["no PNG: kaleido is not installed (pip install kaleido; it renders with an installed Chrome/Chromium)"]
    try:
        atomic_write_bytes(out / "ablation.png", fig.to_image(format="png", width=1000, height=500))
    except Exception as error:  # kaleido's errors (no browser, ...) have no common base class
        return [f"no PNG: kaleido could not render ({type(error).__name__}: {str(error).splitlines()[0][:200]})"]
    return []


# ----------------------------------------------------------------------------- the command


def ablate(base: TrainConfig, cells: list[Cell], seeds: list[int], val_fraction: float,
           out: Path) -> dict[str, Any]:
    """Train (or resume, or skip) every cell x seed, collect each run's test metrics, write OUT's
    table and JSON after every run and the plot at the end; returns the JSON's content, with
    "notes" added (why no PNG was written, if none was)."""
    runs = [(cell, seed, run_config(cell, seed, val_fraction, out)) for cell in cells for seed in seeds]
    problems = [reason for _, _, run in runs if (reason := mismatch(run))]
    if problems:
        raise UsageError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    device = resolve_device(base.device)
    test_sets: dict[tuple, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {cell.name: [] for cell in cells}
    failed: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    notes: list[str] = []

    def collect(plot: bool) -> None:
        result.update({
            "cells": [{"name": cell.name, "train_config": cell.config.replace(out=str(out / cell.name)).to_dict(),
                       "runs": len(rows[cell.name]), "summary": summarise(rows[cell.name])} for cell in cells],
            "runs": [row for cell in cells for row in rows[cell.name]], "failed": failed, "seeds": seeds,
            "val_fraction": val_fraction,
            "selected": "best validation epoch" if val_fraction or base.val_groups else "final epoch",
            "train_config": base.to_dict()})
        notes[:] = write_outputs(out, result, plot)

    bar = tqdm(runs, desc="runs", unit="run", disable=not base.progress)
    for cell, seed, run in bar:
        bar.set_postfix_str(f"{cell.name} seed {seed}")
        try:
            if not finished(run):
                protocol.train_to_end(run)
        except training.TrainingDiverged as error:
            failed.append({"cell": cell.name, "seed": seed, "dir": run.out, "error": str(error)})
            tqdm.write(f"{cell.name} seed {seed}: {error}", file=sys.stderr)
            continue
        rows[cell.name].append({"cell": cell.name, "seed": seed, "dir": run.out,
                                **run_metrics(run, device, test_sets)})
        collect(plot=False)
    collect(plot=True)
    return {**result, "notes": notes}


def parser() -> Parser:
    p = Parser(prog=PROG, allow_abbrev=False, description=__doc__.splitlines()[0],
                epilog="Every other flag is passed to python -m diablo.train (see its --help), e.g. --preset cub.")
    p.add_argument("--attention", nargs="+", choices=ATTENTIONS, default=["pre", "post", "none"], metavar="A",
                   help="pre, post (DIABLO, Figure 1) and/or none (the baseline); default: all three")
    p.add_argument("--selection", nargs="+", choices=SELECTIONS, default=["feature", "dimension"], metavar="S",
                   help="feature (Eq 5-9) and/or dimension (Eq 10-13); default: both")
    p.add_argument("--entries", nargs="+", type=int, metavar="N", help="dictionary sizes (Table 4: 2 4 8 16)")
    p.add_argument("--alpha", nargs="+", type=float, help="assignment hardness values (Eq 7, 11)")
    p.add_argument("--loss", nargs="+", choices=LOSS_NAMES, metavar="LOSS", help=f"losses ({', '.join(LOSS_NAMES)})")
    p.add_argument("--dictionary-init", nargs="+", metavar="INIT",
                   help=f"dictionary starts ({', '.join(DICTIONARY_INITS)}), each crossed with every variant, or "
                        "VARIANT=START for one variant's (e.g. post-feature=kmeans pre-dimension=shared)")
    over = p.add_mutually_exclusive_group()
    over.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds of each cell (default: 0 1 2)")
    over.add_argument("--protocol-splits", type=int, metavar="S",
                      help="run each cell over the §4.2 protocol's S train / validation splits instead (paper: 10)")
    p.add_argument("--split-fraction", type=float, metavar="F",
                   help="with --protocol-splits: share of the training classes held out (default 0.5)")
    p.add_argument("--out", default="runs/ablation", metavar="DIR", help="output folder (default: runs/ablation)")
    return p


def train_config(rest: list[str]) -> TrainConfig:
    """diablo.train's config from the other flags; its usage errors become one UsageError line."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            config, _ = training.config_from_args(rest)
    except SystemExit:
        errors = [line.split("error:", 1)[1].strip() for line in buffer.getvalue().splitlines() if "error:" in line]
        raise UsageError(errors[-1] if errors else f"bad training flags: {' '.join(rest)}") from None
    return config


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    given = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    try:
        if given & {"--resume", "--overwrite"}:
            raise UsageError("--resume and --overwrite are not flags of the grid: rerun the same command to resume "
                             "its runs, or use another --out")
        if args.protocol_splits is not None:
            fraction = 0.5 if args.split_fraction is None else args.split_fraction
            if args.protocol_splits < 1 or not 0 < fraction < 1:
                raise UsageError(f"need --protocol-splits >= 1 and 0 < --split-fraction < 1, "
                                 f"got {args.protocol_splits}, {fraction}")
            if "--val-fraction" in given:
                raise UsageError("--val-fraction is set by --protocol-splits (use --split-fraction)")
        else:
            if args.split_fraction is not None:
                raise UsageError("--split-fraction needs --protocol-splits")
            if "--seed" in given:
                raise UsageError("use --seeds, not --seed (which only offsets --protocol-splits)")
        base = train_config([*rest, "--out", args.out])
        if args.protocol_splits is not None:  # the protocol's seeds: seed + split (diablo.protocol.split_config)
            seeds, val_fraction = [base.seed + i for i in range(args.protocol_splits)], fraction
        else:
            seeds, val_fraction = _unique(args.seeds, 0) if args.seeds else [0, 1, 2], base.val_fraction
        cells = grid(base, args.attention, args.selection, args.entries, args.alpha, args.loss, args.dictionary_init)
        result = ablate(base, cells, seeds, val_fraction, Path(args.out))
    except (ValueError, FileNotFoundError) as error:  # UsageError, a dataset or run folder that cannot serve
        p.error(" ".join(str(error).split()))
    print(markdown_table(result))
    for note in result["notes"]:
        print(note, file=sys.stderr)
    print(f"written: {args.out}/ablation.md, ablation.json, ablation.html"
          + ("" if result["notes"] else ", ablation.png"), file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
