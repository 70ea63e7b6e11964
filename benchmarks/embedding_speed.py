"""Embedding speed and FLOPs of the baseline and the four DIABLO variants (paper §4.1).

For each backbone: images/s of `model(x)` under torch.inference_mode (a warm-up, then the median of
several timed repeats) and GFLOP per image from torch.utils.flop_counter.FlopCounterMode, which
counts convolutions and matrix products (2 x MAC) but not element-wise work (softmax, the merge
A ⊙ F, normalisation). Ratios are to the same backbone's baseline; time ratio / FLOP ratio above 1
means the variant costs more time than its FLOPs predict.

    python benchmarks/embedding_speed.py --batch-size 32 --image-size 224 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

import diablo

VARIANTS = [("none", "dimension"), ("pre", "feature"), ("pre", "dimension"), ("post", "feature"), ("post", "dimension")]


@dataclass
class Row:
    """One measured (backbone, variant)."""

    backbone: str
    variant: str
    gflop_per_image: float
    images_per_s: float
    seconds_per_batch: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes before timing")
    parser.add_argument("--backbones", nargs="+", default=["googlenet", "mobilenet_v2"],
                        choices=["googlenet", "mobilenet_v2"])
    parser.add_argument("--num-entries", type=int, default=8, help="N, the dictionary size")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own); on a CPU shared with other busy processes "
                             "1 thread avoids OpenMP spin-wait stalls that can slow a forward pass 100x")
    return parser.parse_args(argv)


def gflop_per_image(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """FLOPs of one image's forward pass, in GFLOP (FLOPs are linear in the batch size)."""
    x = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def timed_forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Wall time of one forward pass (synchronised on CUDA)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> list[Row]:
    """Per backbone, the variants are timed round-robin (one pass of each per repeat), so that a change
    in background load during the run touches all of them alike instead of biasing one."""
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    rows = []
    for backbone in args.backbones:
        models = {}
        for attention, selection in VARIANTS:
            cfg = diablo.ModelConfig(backbone=backbone, pretrained="none", attention=attention, selection=selection,
                                     num_entries=args.num_entries)
            models[cfg.variant] = diablo.build_model(cfg).to(device).eval()
        flops = {name: gflop_per_image(model, args.image_size, device) for name, model in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for round_ in range(args.warmup + args.repeats):
                for name, model in models.items():
                    seconds = timed_forward(model, x)
                    if round_ >= args.warmup:
                        times[name].append(seconds)
                print(f"  {backbone}: round {round_ + 1} / {args.warmup + args.repeats} done", file=sys.stderr,
                      flush=True)
        for name in models:
            seconds = statistics.median(times[name])
            rows.append(Row(backbone, name, flops[name], args.batch_size / seconds, seconds))
        del models
    return rows


def table(rows: list[Row]) -> str:
    """A fixed-width table with ratios to each backbone's baseline."""
    header = (f"{'backbone':<13} {'variant':<15} {'GFLOP/img':>9} {'img/s':>8} {'time ratio':>10} "
              f"{'FLOP ratio':>10} {'time/FLOP':>9}")
    lines = [header, "-" * len(header)]
    baselines = {r.backbone: r for r in rows if r.variant == "baseline"}
    for r in rows:
        base = baselines[r.backbone]
        time_ratio = r.seconds_per_batch / base.seconds_per_batch
        flop_ratio = r.gflop_per_image / base.gflop_per_image
        lines.append(f"{r.backbone:<13} {r.variant:<15} {r.gflop_per_image:>9.2f} {r.images_per_s:>8.1f} "
                     f"{time_ratio:>10.2f} {flop_ratio:>10.2f} {time_ratio / flop_ratio:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/embedding_speed.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# command: {command}")
    device = args.device if args.device != "cuda" else torch.cuda.get_device_name()
    print(f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"# N = {args.num_entries}, batch {args.batch_size}, {args.image_size} x {args.image_size} px, "
          f"inference mode, {args.warmup} warm-up + median of {args.repeats} repeats (variants interleaved), "
          "pretrained='none'")
    print("# FLOPs: FlopCounterMode (convolutions and matrix products, 2 x MAC; element-wise ops not counted)")
    print(table(measure(args)))


if __name__ == "__main__":
    main()
