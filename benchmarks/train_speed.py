"""Training images/s of the demo preset for the baseline and the four DIABLO variants, per CPU option.

One training step = forward, binomial deviance, backward and Adam on one P x K batch of the demo
preset (8 x 5 images, 128 px, ImageNet MobileNetV2). Each option is timed in the same process,
round-robin (option A step, option B step, ...) so that the machine's load hits every option alike;
ratios are to "eager" (contiguous NCHW float32, the code's behaviour before channels_last). The data
side is measured apart: images/s that the DataLoader delivers from the synthetic training split
with the demo's augmentation, per number of workers.

    .venv/bin/python benchmarks/train_speed.py [--steps 4] [--threads 1] [--options eager channels_last]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diablo  # noqa: E402
from diablo.config import PRESETS, TrainConfig  # noqa: E402
from diablo.losses import build_loss  # noqa: E402
from diablo.samplers import ClassBalancedSampler  # noqa: E402

VARIANTS = [("none", "feature"), ("pre", "feature"), ("pre", "dimension"), ("post", "feature"),
            ("post", "dimension")]
OPTIONS = ("eager", "channels_last", "bfloat16", "compile")


def step_function(config: TrainConfig, option: str) -> Callable[[], None]:
    """A closure that runs one training step of `config` under `option`."""
    model = diablo.build_model(config.model_config()).train()
    images = torch.randn(config.classes_per_batch * config.images_per_class, 3, config.image_size,
                         config.image_size)  # (B, 3, H, W)
    labels = torch.arange(config.classes_per_batch).repeat_interleave(config.images_per_class)
    if option in ("channels_last", "bfloat16", "compile"):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if option == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = build_loss(config.loss)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bfloat16"):
            z = net(images)  # (B, D)
        loss = loss_fn(z.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def data_speed(config: TrainConfig, workers: int, batches: int) -> float:
    """Images/s the training DataLoader delivers (decode + augmentation), after its first batch."""
    from diablo.train import training_set

    data = training_set(config)
    sampler = ClassBalancedSampler(data.labels, config.classes_per_batch, config.images_per_class,
                                   batches_per_epoch=batches + 1, seed=0)
    loader = iter(torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers))
    next(loader)
    start = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps per option (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per option (compile: its compilation)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--options", nargs="+", default=["eager", "channels_last"], choices=OPTIONS)
    p.add_argument("--variants", nargs="+", default=["baseline", *(f"{a}-{s}" for a, s in VARIANTS[1:])],
                   choices=["baseline", *(f"{a}-{s}" for a, s in VARIANTS[1:])])
    p.add_argument("--data-workers", nargs="*", type=int, default=[0, 1], help="DataLoader workers to measure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = {**PRESETS["demo"], "progress": False}
    print(f"command: .venv/bin/python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start {os.getloadavg()[0]:.1f}")
    print("\n| variant | " + " | ".join(f"{o} img/s" for o in args.options) + " | " +
          " | ".join(f"{o} / eager" for o in args.options[1:]) + " |")
    print("|---" * (2 * len(args.options)) + "|")
    for name in args.variants:
        attention, selection = ("none", "feature") if name == "baseline" else name.split("-")
        config = TrainConfig(**{**demo, "attention": attention, "selection": selection})
        steps = {}
        for option in args.options:
            steps[option] = step_function(config, option)
            for _ in range(args.warmup):
                steps[option]()
        times: dict[str, list[float]] = {o: [] for o in args.options}
        for _ in range(args.steps):
            for option, step in steps.items():
                start = time.perf_counter()
                step()
                times[option].append(time.perf_counter() - start)
        batch = config.classes_per_batch * config.images_per_class
        speed = {o: batch / statistics.median(t) for o, t in times.items()}
        base = speed[args.options[0]]
        label = "baseline" if attention == "none" else name
        print(f"| {label} | " + " | ".join(f"{speed[o]:.1f}" for o in args.options) + " | "
              + " | ".join(f"{speed[o] / base:.2f}" for o in args.options[1:]) + " |", flush=True)
    if args.data_workers:
        config = TrainConfig(**demo)
        print("\n| DataLoader workers | images/s |\n|---|---|")
        for workers in args.data_workers:
            print(f"| {workers} | {data_speed(config, workers, batches=6):.0f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
