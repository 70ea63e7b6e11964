"""kill -9 a training at random moments, resume it each time, and check that nothing was lost.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--seed 0]

A tiny run (folder dataset of 8 colour classes, MobileNetV2 without pretrained weights, 32 px) is
first run uninterrupted. Then the same command is started, killed with SIGKILL at a moment drawn
uniformly from the uninterrupted run's duration, resumed with `--resume`, killed again, and so on
`--kills` times, then resumed to the end. After each death every file of the run directory must
load; after the restart's recovery, last / best / metrics.jsonl must agree with run.json. At the
end the history (without its timing fields) must equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diablo  # noqa: E402
from diablo.checkpoint import read_metadata  # noqa: E402
from diablo.run_directory import RunDirectory  # noqa: E402

VOLATILE = ("time_s", "images_per_s")


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(8):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(6):
            pixels = np.clip(colour + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def command(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diablo.train", "--dataset", "folder", "--root", str(folder), "--backbone",
            "mobilenet_v2", "--pretrained", "none", "--entries", "2", "--embedding-dim", "16", "--image-size", "32",
            "--classes-per-batch", "2", "--images-per-class", "3", "--epochs", "6", "--steps-per-epoch", "4",
            "--workers", "0", "--lr", "1e-4", "--no-progress", "--out", str(out)]


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in history]


def check(out: Path) -> str:
    """'' when the directory is sound after recovery, else what is wrong."""
    for path in [*out.glob("*.safetensors"), *(out / "epochs").glob("*.safetensors")]:
        if "state" in path.name:
            load_file(path)  # the optimiser's moments: raises on a damaged file
        else:
            diablo.load_checkpoint(path, device="cpu")
    if not (out / "run.json").exists():
        return "" if not (out / "last.safetensors").exists() else "last.safetensors without run.json"
    RunDirectory(out).recover()
    manifest = json.loads((out / "run.json").read_text())
    scores = [row.get("recall@1", -1.0) for row in manifest["history"]]
    problems = [
        read_metadata(out / "last.safetensors")[1]["epoch"] != manifest["epoch"] and "last is another epoch",
        read_metadata(out / "best.safetensors")[1]["epoch"] != scores.index(max(scores)) and "best is not the best",
        [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] != manifest["history"]
        and "metrics.jsonl differs from the history",
    ]
    return "; ".join(p for p in problems if p)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    folder = make_folder(work / "folder")
    reference, killed = work / "reference", work / "killed"
    start = time.perf_counter()
    subprocess.run(command(folder, reference), check=True, cwd=ROOT, capture_output=True)
    duration = time.perf_counter() - start
    expected = stable(json.loads((reference / "run.json").read_text())["history"])
    print(f"uninterrupted run: {duration:.1f} s, {len(expected)} history rows")
    print("kill | after s | committed epoch | sound")
    failures = 0
    for kill in range(1, args.kills + 1):
        resume = RunDirectory(killed).holds_run()
        argv = [*command(folder, killed)[:3], "--resume", str(killed)] if resume else command(folder, killed)
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moment = rng.uniform(0, duration)
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        problem = check(killed)
        failures += bool(problem)
        epoch = json.loads((killed / "run.json").read_text())["epoch"] if (killed / "run.json").exists() else "-"
        print(f"{kill:4d} | {moment:7.2f} | {epoch!s:>15} | {problem or 'yes'}")
    final = [*command(folder, killed)[:3], "--resume", str(killed)]
    subprocess.run(final, check=True, cwd=ROOT, capture_output=True)
    same = stable(json.loads((killed / "run.json").read_text())["history"]) == expected
    print(f"after {args.kills} kills: {failures} unsound directories; final history equals the uninterrupted "
          f"run's: {same}")
    print(f"command: .venv/bin/python benchmarks/kill_resume.py --kills {args.kills} --seed {args.seed}")
    return 0 if same and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
