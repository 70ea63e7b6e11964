"""`python -m diablo.export`: a checkpoint's embedding model as one ONNX file, metadata included.

    python -m diablo.export --checkpoint runs/cub/best.safetensors --out model.onnx [--attention]

The file has one input, `images` (batch, 3, height, width): float32, ImageNet-normalised RGB, as
`model(x)` takes. Outputs: `embedding` (batch, D), unit L2 norm, and with `--attention` also
`attention` (batch, N, c or 1, h, w), the soft attention maps of `model.inspect(x).attention`
(the baseline has none). Batch, height and width are dynamic: the graph is traced once at
`--image-size` (default: the size the checkpoint was trained at, else 224) and runs at any batch
and any image size the backbone takes (GoogLeNet: sides >= 15 px; MobileNetV2: >= 1 px).

The model's metadata_props hold, as strings: `diablo_onnx_format`, `diablo_version`, `variant`,
`model_config` (the ModelConfig as JSON), `meta` (the checkpoint's meta as JSON: test metrics,
train config, history, ...), `image_size` (the traced size), `min_image_size` (the smallest side
the exported program's shape analysis admits, at least 1) and `outputs`. `read_onnx_metadata`
decodes them.

Exporter: torch.onnx.export with dynamo=True (torch.export), the supported one; the TorchScript
exporter is deprecated. Opset pinned to ONNX_OPSET. What is exported is a copy of the model with
each BatchNorm that follows a convolution folded into it, so onnxruntime's outputs differ from
`model(x)` by float rounding only (about 1e-6 to 1e-5). The file is written atomically.

Exit codes: 0 written; 1 the checkpoint is missing or not a diablo checkpoint, or --out cannot be
written; 2 a bad command line (argparse's code), including --attention for a baseline and an
--image-size the backbone cannot take.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from diablo import __version__
from diablo.config import ModelConfig
from diablo.files import atomic_write
from diablo.model import DiabloNet

ONNX_OPSET = 20  # torch 2.14's default ONNX opset (tested with onnxruntime 1.32)
FORMAT_VERSION = "1"
INPUT_NAME = "images"
DEFAULT_IMAGE_SIZE = 224
# torch.export's symbolic-shape solver logs multi-line tracebacks (at WARNING) for inequalities
# it cannot simplify (GoogLeNet's ceil-mode pools); harmless, and silenced during the export.
_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch.export", "torch.onnx")


class _Embedder(nn.Module):
    """`model(x)`, or (`model(x)`, `model.inspect(x).attention`): what the ONNX graph computes."""

    def __init__(self, model: DiabloNet, attention: bool) -> None:
        super().__init__()
        self.model = model
        self.attention = attention

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model.inspect(images)
        if self.attention:
            return out.embedding, out.attention
        return out.embedding


def _export_copy(model: DiabloNet) -> DiabloNet:
    """A float32 CPU copy in eval mode, simplified for torch.export without changing its function:
    activations out of place and each BatchNorm that follows a convolution in a Sequential folded
    into it (torch.export decomposes in-place ops and BatchNorm slowly under dynamic shapes; the
    folding changes outputs by rounding only). The caller's model is left untouched."""
    clone = copy.deepcopy(model).float().cpu().eval()
    for module in list(clone.modules()):
        if getattr(module, "inplace", False) is True:
            module.inplace = False
        if isinstance(module, nn.Sequential):
            _fold_batch_norms(module)
    return clone


def _fold_batch_norms(sequence: nn.Sequential) -> None:
    """Replace each (Conv2d, BatchNorm2d) pair of `sequence` (eval mode) by the fused Conv2d and an Identity."""
    children = list(sequence._modules.items())
    for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
            sequence._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
            sequence._modules[bn_name] = nn.Identity()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Raise the exporter's loggers to ERROR for the duration of the export."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _min_image_size(program: Any) -> int | None:
    """The smallest height / width (at least 1) the exported program's range constraints allow."""
    exported = getattr(program, "exported_program", None)
    if exported is None:
        return None
    placeholders = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME]
    if not placeholders:
        return None
    shape = placeholders[0].meta["val"].shape
    lows = []
    for side in shape[2:]:
        if isinstance(side, int):
            lows.append(side)
            continue
        bounds = exported.range_constraints.get(side.node.expr)
        lows.append(int(bounds.lower) if bounds is not None else 1)
    return max([1, *lows])


def export_onnx(
    model: DiabloNet,
    config: ModelConfig,
    meta: dict[str, Any] | None,
    path: str | os.PathLike,
    attention: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Write `model` as an ONNX file at `path` (atomically); returns the path.

    Dynamic batch, height and width, traced at `image_size` x `image_size`; `attention` adds the
    attention maps as a second output. `config` and `meta` go JSON-encoded into metadata_props.
    ValueError for a config that is not `model.config`, attention on the baseline or an image size
    the backbone cannot take.
    """
    import onnx  # the exporter needs onnx, onnxscript; imported here so that `import diablo.export` stays light

    if config != model.config:
        raise ValueError(f"config ({config.variant}, {config.backbone}) is not the one the model was built from")
    if attention and config.attention == "none":
        raise ValueError("the baseline (attention='none') has no attention maps to export; drop --attention")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    wrapper = _Embedder(_export_copy(model), attention).eval()
    example = torch.randn(2, 3, image_size, image_size)  # batch 2: torch.export specialises sizes 0 and 1
    try:
        with torch.no_grad():
            wrapper(example)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{config.backbone} cannot embed {image_size} px images: {first}") from None
    outputs = ["embedding", "attention"] if attention else ["embedding"]
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={"images": {0: "batch", 2: "height", 3: "width"}},
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    min_size = _min_image_size(program)
    props = {
        "diablo_onnx_format": FORMAT_VERSION,
        "diablo_version": __version__,
        "variant": config.variant,
        "model_config": json.dumps(config.to_dict()),
        "meta": json.dumps(meta or {}, default=str),
        "image_size": str(image_size),
        "min_image_size": "" if min_size is None else str(min_size),
        "outputs": ",".join(outputs),
    }
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"DIABLO {config.variant} ({config.backbone}, N = {config.num_entries}, D = {config.embedding_dim}): "
        f"{INPUT_NAME} (batch, 3, height, width) ImageNet-normalised -> " + ", ".join(outputs)
    )
    return atomic_write(Path(path), lambda tmp: onnx.save_model(proto, tmp))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata_props of an exported file, `model_config` and `meta` decoded from JSON."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props: dict[str, Any] = {p.key: p.value for p in model.metadata_props}
    for key in ("model_config", "meta"):
        if key in props:
            props[key] = json.loads(props[key])
    return props


def _check_writable(out: Path) -> None:
    """OSError (one line) if `out` obviously cannot be written, before the slow export starts."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: folder {parent} is not writable")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diablo.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a diablo .safetensors checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--attention", action="store_true", help="also output the attention maps")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the side the graph is traced at (default: the checkpoint's training size, else 224); "
                             "the exported model takes other sizes too")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image-size must be positive, got {args.image_size}")
    from diablo.checkpoint import load_checkpoint
    from diablo.evaluate import trained_image_size

    try:
        _check_writable(args.out)
        model, config, meta = load_checkpoint(args.checkpoint, device="cpu")
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.attention and config.attention == "none":
        parser.error(f"{args.checkpoint} is a baseline (attention='none'): it has no attention maps to export")
    image_size = args.image_size or trained_image_size(meta) or DEFAULT_IMAGE_SIZE
    try:
        path = export_onnx(model, config, meta, args.out, attention=args.attention, image_size=image_size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    outputs = "embedding + attention" if args.attention else "embedding"
    print(f"wrote {path} ({config.variant}, {outputs}, traced at {image_size} px, opset {ONNX_OPSET}, "
          f"{path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
