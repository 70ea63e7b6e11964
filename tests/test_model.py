"""diablo.model: every variant's Inspection, Eq 9 / 13 and the branch readout recomputed, the baseline,
frozen BatchNorm, gradients, the rescaling under which uniform attention is the pretrained network, empty
batches, and the one-line error for a weights file that is not one."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
import torch.nn.functional as nnf
from torchvision import models

import diablo
from diablo.backbones import weight_path
from diablo.model import Inspection

B, N, D = 2, 4, 128
SMALL, SQUARE = (96, 128), (224, 224)  # SMALL is non-square, on purpose
ATTENDED = [(b, a, s) for b in ("googlenet", "mobilenet_v2") for a in ("pre", "post") for s in ("feature", "dimension")]
BASELINES = [("googlenet", "none", "dimension"), ("mobilenet_v2", "none", "dimension")]
ALL = ATTENDED + BASELINES
# docs/design.md §4: channels of F, phi(F) and the pooled map; F is H/16 x W/16 (pre) or H/32 x W/32 (post).
F_CHANNELS = {("googlenet", "pre"): 480, ("googlenet", "post"): 832, ("mobilenet_v2", "pre"): 64,
              ("mobilenet_v2", "post"): 160}
PHI_CHANNELS = {("googlenet", "pre"): 832, ("googlenet", "post"): 1024, ("mobilenet_v2", "pre"): 96,
                ("mobilenet_v2", "post"): 320}
OUT = {"googlenet": 1024, "mobilenet_v2": 1280}


def _config(backbone: str, attention: str, selection: str, **changes: object) -> diablo.ModelConfig:
    return diablo.ModelConfig(backbone=backbone, pretrained="none", attention=attention, selection=selection,
                              num_entries=N, embedding_dim=D, alpha=3.0).replace(**changes)


def _well_scaled(model: diablo.DiabloNet) -> diablo.DiabloNet:
    """Kaiming-initialise every convolution of a pretrained="none" model.

    torchvision's own random init (std 0.01 for GoogLeNet) with BatchNorm on its initial running
    statistics shrinks the activations to ~1e-12 by the last map, which makes every embedding equal
    to the normalised bias and would let wrong merges pass unnoticed.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


@cache
def _model(backbone: str, attention: str, selection: str) -> diablo.DiabloNet:
    torch.manual_seed(0)
    return _well_scaled(diablo.build_model(_config(backbone, attention, selection))).eval()


@cache
def _input(size: tuple[int, int]) -> torch.Tensor:
    return torch.randn(B, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


@cache
def _inspect(variant: tuple[str, str, str], size: tuple[int, int], hard: bool = False) -> Inspection:
    with torch.no_grad():
        return _model(*variant).inspect(_input(size), hard=hard)


def _readout(model: diablo.DiabloNet, h: torch.Tensor) -> torch.Tensor:
    """Per branch n: global average pooling, W_n p + b_n, L2 norm (§4.1), written out branch by branch."""
    pooled = h.mean(dim=(-2, -1))  # (B, N, C)
    weight, bias = model.embedding.weight, model.embedding.bias  # (N, D/N, C), (N, D/N)
    branches = [pooled[:, n] @ weight[n].T + bias[n] for n in range(h.shape[1])]
    return torch.stack([z / z.norm(dim=-1, keepdim=True) for z in branches], dim=1)


def _recompute_branches(model: diablo.DiabloNet, out: Inspection) -> torch.Tensor:
    """Eq 3-4 (pre) or Eq 1-2 (post) with M of Eq 9 / 13 from the inspected values and attention."""
    values, a = out.values, out.attention  # (B, c, h, w), (B, N, 1 or c, h, w)
    maps = []
    for n in range(a.shape[1]):
        merged = a[:, n] * values * model.scale  # H^(n)_ijk = A^(n)_ijk F_ijk (A^(n) broadcast over k if 1 channel)
        maps.append(model.psi(merged) if model.config.attention == "pre" else merged)  # pre: psi per branch
    return _readout(model, torch.stack(maps, dim=1))


@pytest.mark.parametrize("size", [SMALL, SQUARE], ids=["96x128", "224"])
@pytest.mark.parametrize("variant", ALL, ids="-".join)
def test_inspection_shapes(variant: tuple[str, str, str], size: tuple[int, int]) -> None:
    backbone, attention, selection = variant
    out = _inspect(variant, size)
    height, width = size
    if attention == "none":
        assert out.values.shape == (B, OUT[backbone], height // 32, width // 32)
        assert out.phi is None and out.attention is None
        assert out.branch_embeddings.shape == (B, 1, D)
    else:
        stride = 16 if attention == "pre" else 32
        h, w = height // stride, width // stride
        c = F_CHANNELS[(backbone, attention)] if attention == "pre" else OUT[backbone]
        assert out.values.shape == (B, c, h, w)
        assert out.phi.shape == (B, PHI_CHANNELS[(backbone, attention)], h, w)
        assert out.attention.shape == (B, N, c if selection == "dimension" else 1, h, w)
        assert out.branch_embeddings.shape == (B, N, D // N)
    assert out.embedding.shape == (B, D) and out.embedding.dtype == torch.float32


@pytest.mark.parametrize("size", [SMALL, SQUARE], ids=["96x128", "224"])
@pytest.mark.parametrize("variant", ALL, ids="-".join)
def test_embedding_is_concatenated_unit_branches(variant: tuple[str, str, str], size: tuple[int, int]) -> None:
    out = _inspect(variant, size)
    branches = out.branch_embeddings.shape[1]
    torch.testing.assert_close(out.branch_embeddings.norm(dim=-1), torch.ones(B, branches))
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(B))
    expected = torch.cat([out.branch_embeddings[:, n] for n in range(branches)], dim=1) / math.sqrt(branches)
    torch.testing.assert_close(out.embedding, expected)
    with torch.no_grad():
        torch.testing.assert_close(_model(*variant)(_input(size)), out.embedding)


@pytest.mark.parametrize("size", [SMALL, SQUARE], ids=["96x128", "224"])
@pytest.mark.parametrize("variant", ATTENDED, ids="-".join)
def test_merge_and_readout_recomputed(variant: tuple[str, str, str], size: tuple[int, int]) -> None:
    model, out = _model(*variant), _inspect(variant, size)
    with torch.no_grad():
        if variant[1] == "pre":  # values must be F itself: recompute it from the backbone's first part
            torch.testing.assert_close(out.values, model.features(_input(size)))
        else:  # values must be G = psi(F)
            torch.testing.assert_close(out.values, model.psi(model.features(_input(size))))
        expected = _recompute_branches(model, out)
    torch.testing.assert_close(out.branch_embeddings, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ATTENDED, ids="-".join)
def test_hard_embeddings_come_from_hard_weights(variant: tuple[str, str, str]) -> None:
    model, soft, hard = _model(*variant), _inspect(variant, SMALL), _inspect(variant, SMALL, hard=True)
    a = hard.attention
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.sum(dim=1), torch.ones_like(a.sum(dim=1)))
    assert torch.equal(a.argmax(dim=1), soft.attention.argmax(dim=1))  # arg max of Eq 7/11 == arg max of s
    torch.testing.assert_close(hard.values, soft.values)
    torch.testing.assert_close(hard.phi, soft.phi)
    with torch.no_grad():
        expected = _recompute_branches(model, hard)
    torch.testing.assert_close(hard.branch_embeddings, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hard.embedding, soft.embedding, atol=1e-3)
    assert not torch.allclose(soft.embedding[0], soft.embedding[1], atol=1e-3)  # the features are not degenerate
    torch.testing.assert_close(hard.embedding, hard.branch_embeddings.flatten(1) / math.sqrt(N))


@pytest.mark.parametrize("variant", ATTENDED, ids="-".join)
def test_gradients_reach_dictionary_phi_psi_and_embedding(variant: tuple[str, str, str]) -> None:
    model = _model(*variant)
    model.train()
    try:
        target = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
        (model(_input(SMALL)) * target).sum().backward()
        for name, part in [("dictionary", [model.dictionary]), ("phi", list(model.phi.parameters())),
                           ("psi", list(model.psi.parameters())), ("embedding", list(model.embedding.parameters())),
                           ("features", list(model.features.parameters()))]:
            grads = [p.grad for p in part if p.grad is not None]
            assert grads, f"no gradient reaches {name}"
            assert all(g.isfinite().all() for g in grads), name
            assert sum(float(g.abs().sum()) for g in grads) > 0, f"zero gradient in {name}"
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_baseline_has_no_dictionary_and_one_branch(backbone: str) -> None:
    model = _model(backbone, "none", "dimension")
    assert model.dictionary is None and model.alpha is None and model.phi is None and model.selection is None
    out = _inspect((backbone, "none", "dimension"), SMALL)
    torch.testing.assert_close(out.embedding, out.branch_embeddings[:, 0])
    with torch.no_grad():  # values = the last feature map; embedding = L2(W GAP(values) + b)
        torch.testing.assert_close(out.values, model.features(_input(SMALL)))
        torch.testing.assert_close(out.branch_embeddings, _readout(model, out.values[:, None]))


@pytest.mark.parametrize("hard", [False, True])
def test_baseline_inspect_ignores_hard(hard: bool) -> None:
    out = _inspect(("mobilenet_v2", "none", "dimension"), SMALL, hard=hard)
    torch.testing.assert_close(out.embedding, _inspect(("mobilenet_v2", "none", "dimension"), SMALL).embedding)


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("freeze_bn", [True, False])
@pytest.mark.parametrize("attention", ["pre", "none"])
def test_freeze_bn_keeps_running_statistics(attention: str, freeze_bn: bool) -> None:
    config = _config("mobilenet_v2", attention, "feature", freeze_bn=freeze_bn).replace(pretrained="imagenet")
    model = diablo.build_model(config)
    model.train()
    assert model.training
    before = _bn_buffers(model)
    assert before
    model(torch.randn(B, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    after = _bn_buffers(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if freeze_bn:
        assert not changed and not any(m.training for m in norms)
    else:
        assert changed and all(m.training for m in norms)
    model.eval()
    model.train(True)  # a second train() must freeze again
    assert all(not m.training for m in norms) == freeze_bn


def test_random_init_trains_its_batch_norm_even_when_frozen() -> None:
    """Frozen initial statistics (mean 0, var 1) would collapse a random backbone's features."""
    model = diablo.build_model(_config("mobilenet_v2", "none", "feature", freeze_bn=True)).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.training for m in norms)


def _uniform_selection(model: diablo.DiabloNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace S by A = 1/N at every place (and channel)."""
    channels = model.dictionary.shape[1] if model.dictionary.dim() == 3 else 1

    def uniform(phi: torch.Tensor, hard: bool = False) -> torch.Tensor:
        b, _, h, w = phi.shape
        return torch.full((b, N, channels, h, w), 1.0 / N)

    monkeypatch.setattr(model.selection, "forward", uniform)


def _pooled_branches(model: diablo.DiabloNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the embedding layer receives (B, N, C), and psi's output for pre-attention (B*N, C, h, w)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.embedding.register_forward_hook(lambda m, args, out: seen.update(pooled=args[0]))]
    if model.config.attention == "pre":
        hooks.append(model.psi.register_forward_hook(lambda m, args, out: seen.update(psi=out)))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen["pooled"], seen.get("psi")


@pytest.mark.parametrize("selection", ["feature", "dimension"])
@pytest.mark.parametrize("attention", ["pre", "post"])
def test_uniform_attention_with_rescale_is_the_pretrained_network(
    attention: str, selection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rescale=True: N * (1/N) F = F, so every branch sees exactly torchvision's pretrained MobileNetV2."""
    model = diablo.build_model(_config("mobilenet_v2", attention, selection, pretrained="imagenet")).eval()
    _uniform_selection(model, monkeypatch)
    x = _input(SMALL)
    reference = models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(weight_path("mobilenet_v2", "imagenet"), weights_only=True))
    with torch.no_grad():
        full = reference.eval().features(x)  # (B, 1280, 3, 4): the full backbone's last map
    pooled, psi_out = _pooled_branches(model, x)
    if attention == "pre":
        torch.testing.assert_close(psi_out, full.repeat_interleave(N, dim=0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, full.mean(dim=(-2, -1))[:, None].expand(B, N, -1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_uniform_pre_attention_rescale_on_and_off(backbone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With rescale psi receives F (its pretrained input); without, F / N, which changes what psi computes."""
    x = torch.randn(B, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    results = {}
    for rescale in (True, False):
        torch.manual_seed(0)
        model = _well_scaled(diablo.build_model(_config(backbone, "pre", "dimension", rescale=rescale))).eval()
        assert model.scale == (N if rescale else 1.0)
        _uniform_selection(model, monkeypatch)
        with torch.no_grad():
            full = model.psi(model.features(x))
        results[rescale] = (_pooled_branches(model, x)[1], full.repeat_interleave(N, dim=0))
    torch.testing.assert_close(*results[True], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(*results[False], rtol=1e-2, atol=1e-2)


def test_default_config_builds_the_papers_googlenet_without_weights() -> None:
    cfg = diablo.ModelConfig(pretrained="none")
    model = diablo.build_model(cfg)
    assert model.dictionary.shape == (8, 480, 832)  # N x c x m, pre-attention dimension-wise
    assert model.embedding.weight.shape == (8, 64, 1024)
    assert isinstance(model, torch.nn.Module) and model.config == cfg


def test_embedding_dtype_and_batch_independence() -> None:
    """Each image's embedding does not depend on the rest of the batch (frozen BatchNorm, eval)."""
    model = _model("mobilenet_v2", "pre", "dimension")
    x = _input(SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)
    assert nnf.normalize(model(x).detach(), dim=1).dtype == torch.float32


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("variant", ALL, ids="-".join)
def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(variant: tuple[str, str, str], hard: bool) -> None:
    """B = 0 (an empty upload, the last chunk of a split) works in every variant, like B = 2 with 0 rows."""
    model = _model(*variant)
    height, width = SMALL
    with torch.no_grad():
        empty = model.inspect(torch.zeros(0, 3, height, width), hard=hard)
        full = model.inspect(_input(SMALL), hard=hard)
        assert model(torch.zeros(0, 3, height, width)).shape == (0, D)
    for name in ("values", "phi", "attention", "branch_embeddings", "embedding"):
        got, reference = getattr(empty, name), getattr(full, name)
        if reference is None:
            assert got is None, name
        else:
            assert got.shape == (0, *reference.shape[1:]) and got.dtype == reference.dtype, name


def test_build_model_names_a_file_that_is_not_a_state_dict(tmp_path) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cfg = _config("mobilenet_v2", "pre", "feature", pretrained=str(text))
    with pytest.raises(ValueError) as info:
        diablo.build_model(cfg)
    message = str(info.value)
    assert str(text) in message and "state dict" in message and "\n" not in message
