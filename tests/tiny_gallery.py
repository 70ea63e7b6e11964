"""The tiny checkpoint of the gallery-index tests: MobileNetV2 without pretrained weights, N = 2,
D = 16, trained at 32 px, its BatchNorm statistics taken from random images so that its
embeddings differ between images (the initial statistics make every embedding the same)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import diablo

IMAGE_SIZE = 32


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="pre", selection="dimension",
                             num_entries=2, embedding_dim=16)
    model = diablo.build_model(cfg).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # the plain mean over the batches below
                module.reset_running_stats()
        model(torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE))
    return diablo.save_checkpoint(path, model.eval(), cfg, meta={"train_config": {"image_size": IMAGE_SIZE}})
