"""What the attention contributes, measured against uniform attention (docs/design.md §9).

    .venv/bin/python benchmarks/uniform_attention.py init          # untrained models, rescale on / off
    .venv/bin/python benchmarks/uniform_attention.py checkpoint checkpoints/demo-pre-dimension.safetensors

`init`: Recall@1 and MAP@R on the synthetic test classes of untrained models built from the
ImageNet MobileNetV2 (random dictionary and embedding layers), for the baseline and the DIABLO
variants, with `rescale` (psi / the pooling get N * A ⊙ F) and without it (A ⊙ F, the literal
Eq 9 / 13). Without it the pre-attention maps carry ~1/N of F at initialisation, which the
frozen-statistics psi was never trained on. Further rows start the dictionary from random
entries shared across channels (dimension-wise) and from k-means centres of phi features of the
training images (`diablo.dictionary`). H / log N: the mean assignment entropy (1: uniform).
`checkpoint`: the same metrics for a trained checkpoint with its learned attention and with the
attention forced to 1/N everywhere (every branch then sees the same features).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

import diablo
from diablo.data import build_transform
from diablo.dictionary import start_dictionary
from diablo.evaluation import embed, evaluate
from diablo.explain import entry_statistics

VARIANTS = [("none", "feature"), ("pre", "feature"), ("pre", "dimension"), ("post", "feature"), ("post", "dimension")]


def metrics(model: diablo.DiabloNet, data: object) -> str:
    """R@1, MAP@R (%) and, for DIABLO, the mean assignment entropy / log N on the first 200 images."""
    result = evaluate(*embed(model, data, batch_size=100, progress=False), (1,), with_nmi=False)
    entropy = ""
    if model.selection is not None:
        x = torch.stack([data[i][0] for i in range(0, len(data), max(1, len(data) // 200))])
        with torch.inference_mode():
            attention = torch.cat([model.inspect(chunk).attention for chunk in x.split(50)])
        entropy = f" {entry_statistics(attention)['entropy_normalised']:8.2f}"
    return f"{100 * result['recall@1']:6.1f} {100 * result['map@r']:6.1f}{entropy}"


def force_uniform(model: diablo.DiabloNet) -> None:
    """Replace the selection block's output by 1/N at every place (and channel)."""
    learned = model.selection.forward
    model.selection.forward = lambda phi, hard=False: torch.full_like(learned(phi, hard), 1 / model.dictionary.shape[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["init", "checkpoint"])
    p.add_argument("path", nargs="?", help="the checkpoint (mode checkpoint)")
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    data = diablo.load_dataset("synthetic", split="test", transform=build_transform(False, args.image_size))
    print("$ .venv/bin/python benchmarks/uniform_attention.py " + shlex.join(sys.argv[1:]))
    print(f"synthetic test split, {len(data)} images; R@1 and MAP@R in %")
    print(f"{'model':44} {'R@1':>6} {'MAP@R':>6} {'H / log N':>8}")
    if args.mode == "checkpoint":
        model, config, _ = diablo.load_checkpoint(args.path, device="cpu")
        print(f"{config.variant + ', learned attention':44} {metrics(model, data)}", flush=True)
        force_uniform(model)
        print(f"{config.variant + ', uniform attention':44} {metrics(model, data)}")
        return
    train_images = diablo.load_dataset("synthetic", split="train", transform=build_transform(False, args.image_size))
    for attention, selection in VARIANTS:
        rows = [(True, "random")]
        if attention != "none":
            rows += [(False, "random"), *([(True, "shared")] if selection == "dimension" else []), (True, "kmeans")]
        for rescale, init in rows:
            torch.manual_seed(0)
            config = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="imagenet", attention=attention,
                                        selection=selection, rescale=rescale)
            model = diablo.build_model(config)
            start_dictionary(model, init, lambda: train_images, progress=False)
            name = config.variant + ("" if attention == "none" else f", rescale={rescale}, {init}")
            print(f"{name:44} {metrics(model, data)}", flush=True)


if __name__ == "__main__":
    main()
