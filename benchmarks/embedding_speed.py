"""Embedding speed and FLOPs of the baseline and the four DIABLO variants (paper §4.1), in PyTorch
eager mode and in onnxruntime.

For each backbone and batch size: images/s of `model(x)` under torch.inference_mode and of the
same model exported by diablo.export (dynamic shapes, opset diablo.export.ONNX_OPSET) run by
onnxruntime's CPUExecutionProvider with as many threads as torch (a warm-up, then the median of
several timed repeats), and GFLOP per image from torch.utils.flop_counter.FlopCounterMode, which
counts convolutions and matrix products (2 x MAC) but not element-wise work (softmax, the merge
A ⊙ F, normalisation). ORT/eager is onnxruntime's images/s over eager's at the same batch size.
Time ratio (eager, largest batch) and FLOP ratio are to the same backbone's baseline; time / FLOP
above 1 means the variant costs more time than its FLOPs predict. Every (variant, engine, batch)
is timed once per round, round-robin, so that a change in background load touches all alike; the
load average before and after the run is printed with the table.

    python benchmarks/embedding_speed.py --batch-sizes 1 32 --image-size 224 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import diablo

VARIANTS = [("none", "dimension"), ("pre", "feature"), ("pre", "dimension"), ("post", "feature"), ("post", "dimension")]


@dataclass
class Row:
    """One measured (backbone, variant): median seconds per batch, by batch size."""

    backbone: str
    variant: str
    gflop_per_image: float
    eager_seconds: dict[int, float]
    onnx_seconds: dict[int, float] = field(default_factory=dict)  # empty without onnxruntime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes before timing")
    parser.add_argument("--backbones", nargs="+", default=["googlenet", "mobilenet_v2"],
                        choices=["googlenet", "mobilenet_v2"])
    parser.add_argument("--num-entries", type=int, default=8, help="N, the dictionary size")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and onnxruntime CPU threads (default: torch's own); on a CPU shared with other "
                             "busy processes 1 thread avoids OpenMP spin-wait stalls that can slow a pass 100x")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime column")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be positive")
    args.batch_sizes = sorted(set(args.batch_sizes))
    return args


def gflop_per_image(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """FLOPs of one image's forward pass, in GFLOP (FLOPs are linear in the batch size)."""
    x = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def timed(run: Any, x: Any, cuda: bool = False) -> float:
    """Wall time of `run(x)` (synchronised on CUDA)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def onnx_runner(model: diablo.DiabloNet, config: diablo.ModelConfig, folder: Path, image_size: int,
                threads: int) -> Any:
    """Export `model` with diablo.export and return `x (numpy) -> embedding` on onnxruntime's CPU."""
    import onnxruntime as ort

    from diablo.export import export_onnx

    path = export_onnx(model, config, None, folder / f"{config.backbone}-{config.variant}.onnx", image_size=image_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["embedding"], {"images": x})


def measure(args: argparse.Namespace, folder: Path) -> list[Row]:
    """Per backbone, every (variant, engine, batch size) is timed round-robin: one pass of each per round."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    with_onnx = not args.no_onnx and device.type == "cpu"
    inputs = {b: torch.randn(b, 3, args.image_size, args.image_size, device=device) for b in args.batch_sizes}
    arrays = {b: x.cpu().numpy() for b, x in inputs.items()}
    rows = []
    for backbone in args.backbones:
        models, runners = {}, {}
        for attention, selection in VARIANTS:
            cfg = diablo.ModelConfig(backbone=backbone, pretrained="none", attention=attention, selection=selection,
                                     num_entries=args.num_entries)
            models[cfg.variant] = diablo.build_model(cfg).to(device).eval()
            if with_onnx:
                start = time.perf_counter()
                runners[cfg.variant] = onnx_runner(models[cfg.variant], cfg, folder, args.image_size,
                                                   torch.get_num_threads())
                print(f"  {backbone} {cfg.variant}: exported in {time.perf_counter() - start:.0f} s", file=sys.stderr,
                      flush=True)
        flops = {name: gflop_per_image(model, args.image_size, device) for name, model in models.items()}
        eager: dict[str, dict[int, list[float]]] = {name: {b: [] for b in inputs} for name in models}
        onnx: dict[str, dict[int, list[float]]] = {name: {b: [] for b in inputs} for name in runners}
        with torch.inference_mode():
            for round_ in range(args.warmup + args.repeats):
                for name, model in models.items():
                    for b in inputs:
                        seconds = timed(model, inputs[b], cuda)
                        if round_ >= args.warmup:
                            eager[name][b].append(seconds)
                        if name in runners:
                            seconds = timed(runners[name], arrays[b])
                            if round_ >= args.warmup:
                                onnx[name][b].append(seconds)
                print(f"  {backbone}: round {round_ + 1} / {args.warmup + args.repeats} done", file=sys.stderr,
                      flush=True)
        for name in models:
            rows.append(Row(backbone, name, flops[name],
                            {b: statistics.median(t) for b, t in eager[name].items()},
                            {b: statistics.median(t) for b, t in onnx.get(name, {}).items()}))
        del models, runners
    return rows


def table(rows: list[Row], batch_sizes: list[int]) -> str:
    """A fixed-width table: images/s per engine and batch size, ratios to each backbone's baseline."""
    largest = max(batch_sizes)
    with_onnx = any(r.onnx_seconds for r in rows)
    header = f"{'backbone':<13} {'variant':<15} {'GFLOP/img':>9}"
    for b in batch_sizes:
        header += f" {f'eager b{b}':>10}" + (f" {f'ORT b{b}':>10} {'ORT/eager':>9}" if with_onnx else "")
    header += f" {'time ratio':>10} {'FLOP ratio':>10} {'time/FLOP':>9}"
    lines = [header, "-" * len(header)]
    baselines = {r.backbone: r for r in rows if r.variant == "baseline"}
    for r in rows:
        line = f"{r.backbone:<13} {r.variant:<15} {r.gflop_per_image:>9.2f}"
        for b in batch_sizes:
            eager = b / r.eager_seconds[b]
            line += f" {eager:>10.1f}"
            if with_onnx:
                ort_ips = b / r.onnx_seconds[b]
                line += f" {ort_ips:>10.1f} {ort_ips / eager:>9.2f}"
        base = baselines[r.backbone]
        time_ratio = r.eager_seconds[largest] / base.eager_seconds[largest]
        flop_ratio = r.gflop_per_image / base.gflop_per_image
        line += f" {time_ratio:>10.2f} {flop_ratio:>10.2f} {time_ratio / flop_ratio:>9.2f}"
        lines.append(line)
    return "\n".join(lines)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages and the number of CPUs, as one phrase."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/embedding_speed.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# command: {command}")
    device = args.device if args.device != "cuda" else torch.cuda.get_device_name()
    print(f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    onnx_note = "skipped (--no-onnx)" if args.no_onnx else "skipped (CPU only)" if args.device != "cpu" else ""
    if not onnx_note:
        import onnxruntime

        onnx_note = (f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, {torch.get_num_threads()} "
                     "intra-op threads, the diablo.export file (dynamic shapes)")
    print(f"# ORT column: {onnx_note}")
    sizes = ", ".join(str(b) for b in args.batch_sizes)
    print(f"# N = {args.num_entries}, batch {sizes}, {args.image_size} x {args.image_size} px, inference mode, "
          f"{args.warmup} warm-up + median of {args.repeats} repeats (variants, engines and batches interleaved), "
          "pretrained='none'")
    print("# FLOPs: FlopCounterMode (convolutions and matrix products, 2 x MAC; element-wise ops not counted)")
    print(f"# before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="diablo-speed-") as folder:
        rows = measure(args, Path(folder))
    print(f"# after:  {load_average()}; a shared machine: compare ratios within this run, not across runs")
    print(table(rows, args.batch_sizes))


if __name__ == "__main__":
    main()
