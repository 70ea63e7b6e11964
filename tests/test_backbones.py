"""diablo.backbones: the cut points, phi as a separate copy, local weights (one error line for a file that
is not a state dict), and the measured smallest input of each backbone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torchvision import models

import diablo
from diablo.backbones import CUTS, MIN_IMAGE_SIZE, OUT_CHANNELS, GoogLeNetInput, build_backbone, weight_path
from diablo.config import BACKBONES

# docs/design.md §4 at a 224 x 224 input: (channels, side) of F, phi(F) and the map that is pooled.
TABLE = {
    ("googlenet", "pre"): ((480, 14), (832, 14), (1024, 7)),
    ("googlenet", "post"): ((832, 7), (1024, 7), (1024, 7)),
    ("mobilenet_v2", "pre"): ((64, 14), (96, 14), (1280, 7)),
    ("mobilenet_v2", "post"): ((160, 7), (320, 7), (1280, 7)),
}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
HUB_DIR_AT_IMPORT = torch.hub.get_dir()


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision GoogLeNet state dict (with aux heads, like the real file), random weights."""
    torch.manual_seed(0)
    net = models.googlenet(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path_factory.mktemp("weights") / "googlenet-1378be20.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """Point torch.hub at an empty directory for one test, then restore it."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(old)


@pytest.mark.parametrize(("backbone", "attention"), list(TABLE))
def test_cut_shapes_at_224(backbone: str, attention: str) -> None:
    (f_c, f_s), (phi_c, phi_s), (out_c, out_s) = TABLE[(backbone, attention)]
    split = build_backbone(backbone, "none", attention).__dict__
    with torch.no_grad():
        f = split["features"].eval()(torch.randn(1, 3, 224, 224))
        phi = split["phi"].eval()(f)
        pooled = split["psi"].eval()(f)
    assert f.shape == (1, f_c, f_s, f_s)
    assert phi.shape == (1, phi_c, phi_s, phi_s)
    assert phi.shape[-2:] == f.shape[-2:]  # phi never changes the spatial size of F
    assert pooled.shape == (1, out_c, out_s, out_s)
    cut = CUTS[(backbone, attention)]
    values = f if attention == "pre" else pooled  # the map the attention weights: F (pre) or G (post)
    assert cut.values_channels == values.shape[1]
    assert cut.phi_channels == phi.shape[1]
    assert OUT_CHANNELS[backbone] == pooled.shape[1]


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_baseline_is_the_whole_backbone(backbone: str) -> None:
    split = build_backbone(backbone, "none", "none")
    assert split.phi is None and split.cut is None
    with torch.no_grad():
        out = split.psi(split.features.eval()(torch.randn(1, 3, 224, 224)))
    assert out.shape == (1, OUT_CHANNELS[backbone], 7, 7)


@pytest.mark.parametrize("attention", ["pre", "post"])
def test_split_composes_to_the_full_network(attention: str) -> None:
    """F followed by psi is exactly torchvision's MobileNetV2 feature extractor."""
    torch.manual_seed(1)
    full = build_backbone("mobilenet_v2", "imagenet", "none")
    split = build_backbone("mobilenet_v2", "imagenet", attention)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(split.psi.eval()(split.features.eval()(x)), full.features.eval()(x))


def _assert_phi_is_a_copy(split: object) -> None:
    phi, psi = split.phi, split.psi  # type: ignore[attr-defined]
    phi_state, psi_state = phi.state_dict(), psi.state_dict()
    assert phi_state, "phi has no parameters"
    psi_ptrs = {t.data_ptr() for t in psi_state.values()}
    for key, tensor in phi_state.items():  # phi = copy of psi's first layers, same Sequential indices
        torch.testing.assert_close(tensor, psi_state[key], rtol=0, atol=0)
        assert tensor.data_ptr() not in psi_ptrs
    phi_params = {id(p) for p in phi.parameters()}
    assert not phi_params & {id(p) for p in psi.parameters()}
    first = next(phi.parameters())
    with torch.no_grad():
        first.add_(1.0)
    assert not torch.equal(first, psi_state[next(iter(phi.state_dict()))])  # psi did not move with phi


@pytest.mark.parametrize("attention", ["pre", "post"])
def test_phi_is_a_separate_copy_mobilenet_imagenet(attention: str) -> None:
    _assert_phi_is_a_copy(build_backbone("mobilenet_v2", "imagenet", attention))


@pytest.mark.parametrize("attention", ["pre", "post"])
def test_phi_is_a_separate_copy_googlenet_from_file(googlenet_file: Path, attention: str) -> None:
    _assert_phi_is_a_copy(build_backbone("googlenet", str(googlenet_file), attention))


def test_googlenet_file_is_loaded(googlenet_file: Path) -> None:
    """A torchvision GoogLeNet file (aux heads dropped) really ends up in F and psi."""
    state = torch.load(googlenet_file, weights_only=True)
    split = build_backbone("googlenet", str(googlenet_file), "post")
    torch.testing.assert_close(split.features[1].conv.weight, state["conv1.conv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(split.psi[-1].branch1.conv.weight, state["inception5b.branch1.conv.weight"])


def test_googlenet_imagenet_missing_names_the_file_and_place(hub_dir: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        build_backbone("googlenet", "imagenet", "pre")
    message = str(info.value)
    assert "googlenet-1378be20.pth" in message
    assert str(hub_dir / "checkpoints") in message
    with pytest.raises(FileNotFoundError, match="googlenet-1378be20.pth"):
        weight_path("googlenet", "imagenet")


def test_googlenet_imagenet_found_in_the_hub_cache(hub_dir: Path, googlenet_file: Path) -> None:
    (hub_dir / "checkpoints").mkdir(parents=True)
    target = hub_dir / "checkpoints" / "googlenet-1378be20.pth"
    target.write_bytes(googlenet_file.read_bytes())
    assert weight_path("googlenet", "imagenet") == target
    split = build_backbone("googlenet", "imagenet", "pre")
    state = torch.load(target, weights_only=True)
    torch.testing.assert_close(split.features[1].conv.weight, state["conv1.conv.weight"], rtol=0, atol=0)


def test_hub_dir_is_restored() -> None:
    assert torch.hub.get_dir() == HUB_DIR_AT_IMPORT


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_bad_path_raises_file_not_found(tmp_path: Path, backbone: str) -> None:
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        build_backbone(backbone, str(missing), "pre")


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_garbage_file_raises_value_error(tmp_path: Path, backbone: str) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.pth"):
        build_backbone(backbone, str(garbage), "post")


def test_state_dict_of_another_network_raises_value_error(tmp_path: Path) -> None:
    other = tmp_path / "mobilenet.pth"
    torch.save(models.mobilenet_v2(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="does not match"):
        build_backbone("googlenet", str(other), "pre")


@pytest.mark.parametrize("payload", [torch.zeros(3), [1, 2, 3]], ids=["tensor", "list"])
def test_pth_without_a_state_dict_raises_value_error(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "not_a_state_dict.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a state dict"):
        build_backbone("mobilenet_v2", str(path), "pre")


def test_state_dict_with_other_shapes_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_200_classes.pth"
    torch.save(models.mobilenet_v2(weights=None, num_classes=200).state_dict(), path)
    with pytest.raises(ValueError, match="does not match"):
        build_backbone("mobilenet_v2", str(path), "post")


def test_unknown_backbone_raises() -> None:
    with pytest.raises(ValueError, match="googlenet"):
        build_backbone("resnet50", "none", "pre")


def test_googlenet_input_matches_torchvision_transform_input() -> None:
    net = models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(GoogLeNetInput()(x), net._transform_input(x))


def test_mobilenet_weights_come_from_the_package() -> None:
    path = weight_path("mobilenet_v2", "imagenet")
    assert path.name == "mobilenet_v2-b0353104.pth" and path.is_file()


def _chelsea_batch(size: int = 224) -> torch.Tensor:
    """scikit-image's bundled cat photo: resize the short side to 256, centre crop, ImageNet-normalise."""
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, 300, 451)
    h, w = image.shape[-2:]
    scale = 256 / min(h, w)
    image = nnf.interpolate(image, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    image = image[..., top : top + size, left : left + size]
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def test_real_mobilenet_weights_see_a_cat() -> None:
    net = models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(weight_path("mobilenet_v2", "imagenet"), weights_only=True))
    x = _chelsea_batch()
    with torch.no_grad():
        logits = net.eval()(x)
        features = build_backbone("mobilenet_v2", "imagenet", "none").features.eval()(x)
    assert int(logits.argmax()) in CAT_CLASSES
    assert torch.softmax(logits, dim=1)[0, list(CAT_CLASSES)].sum() > 0.5
    torch.testing.assert_close(features, net.features(x))  # diablo's baseline backbone is the same network


VARIANTS = [("none", "feature"), ("pre", "feature"), ("pre", "dimension"), ("post", "feature"), ("post", "dimension")]


def _tiny(backbone: str, attention: str, selection: str) -> diablo.DiabloNet:
    cfg = diablo.ModelConfig(backbone=backbone, pretrained="none", attention=attention, selection=selection,
                             num_entries=2, embedding_dim=16)
    return diablo.build_model(cfg)


def test_min_image_size_covers_every_backbone() -> None:
    assert set(MIN_IMAGE_SIZE) == set(BACKBONES) == set(OUT_CHANNELS)


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_every_variant_embeds_the_smallest_image_size(backbone: str, variant: tuple[str, str]) -> None:
    model = _tiny(backbone, *variant)
    side = MIN_IMAGE_SIZE[backbone]
    with torch.no_grad():
        for mode in (True, False):  # BatchNorm trains on its batch statistics with pretrained="none"
            z = model.train(mode)(torch.randn(2, 3, side, side))
            assert z.shape == (2, 16) and torch.isfinite(z).all()


def test_the_minimum_is_the_total_stride() -> None:
    """At the minimum the pooled map has exactly one place per side (the network's stride is 32)."""
    for backbone, side in MIN_IMAGE_SIZE.items():
        model = _tiny(backbone, "none", "feature").eval()
        with torch.no_grad():
            values = model.inspect(torch.randn(1, 3, side, side)).values
        assert values.shape[-2:] == (1, 1)


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_googlenet_fails_below_15_pixels(variant: tuple[str, str]) -> None:
    """Below the minimum, GoogLeNet's ceil-mode pooling fails outright at 14 px (MobileNetV2 runs down to 1)."""
    side = 14
    with torch.no_grad(), pytest.raises(RuntimeError, match="too small"):
        _tiny("googlenet", *variant).eval()(torch.randn(2, 3, side, side))


@pytest.mark.parametrize("backbone", ["googlenet", "mobilenet_v2"])
def test_text_file_is_one_value_error_line_naming_it(tmp_path: Path, backbone: str) -> None:
    """A text file (like /etc/passwd) once failed with torch.load's bare "list index out of range"."""
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    with pytest.raises(ValueError) as info:
        build_backbone(backbone, str(text), "pre")
    message = str(info.value)
    assert str(text) in message and "state dict" in message and backbone in message
    assert "\n" not in message


@pytest.mark.parametrize("payload", [{"features.0.0.weight": 1.0}, {1: torch.zeros(1)}], ids=["number", "int-key"])
def test_dict_that_is_not_a_state_dict_is_refused(tmp_path: Path, payload: dict) -> None:
    path = tmp_path / "dict.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a state dict") as info:
        build_backbone("mobilenet_v2", str(path), "none")
    assert "\n" not in str(info.value)


def test_other_shapes_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_200_classes.pth"
    torch.save(models.mobilenet_v2(weights=None, num_classes=200).state_dict(), path)
    with pytest.raises(ValueError, match="classifier.1.weight") as info:
        build_backbone("mobilenet_v2", str(path), "post")
    assert "\n" not in str(info.value)


def test_folder_is_not_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder"):
        build_backbone("mobilenet_v2", str(tmp_path), "pre")
