"""diablo.config: validation of every field, the paper's defaults, and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from diablo.config import ATTENTIONS, BACKBONES, SELECTIONS, ModelConfig


def test_defaults_follow_the_paper() -> None:
    cfg = ModelConfig()
    assert (cfg.backbone, cfg.pretrained, cfg.attention, cfg.selection) == ("googlenet", "imagenet", "pre", "dimension")
    assert (cfg.num_entries, cfg.embedding_dim) == (8, 512)
    assert cfg.alpha > 0


@pytest.mark.parametrize(
    ("field", "allowed"),
    [("backbone", ("googlenet", "mobilenet_v2")), ("attention", ("pre", "post", "none")),
     ("selection", ("feature", "dimension"))],
)
def test_unknown_choice_names_the_allowed_values(field: str, allowed: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as info:
        ModelConfig(**{field: "resnet50x"})
    message = str(info.value)
    assert field in message and "resnet50x" in message
    for value in allowed:
        assert value in message


def test_allowed_tuples_match_the_design() -> None:
    assert set(BACKBONES) == {"googlenet", "mobilenet_v2"}
    assert set(ATTENTIONS) == {"pre", "post", "none"}
    assert set(SELECTIONS) == {"feature", "dimension"}


@pytest.mark.parametrize(("num_entries", "embedding_dim"), [(7, 512), (3, 64), (16, 8)])
def test_num_entries_must_divide_embedding_dim(num_entries: int, embedding_dim: int) -> None:
    with pytest.raises(ValueError, match="divide"):
        ModelConfig(num_entries=num_entries, embedding_dim=embedding_dim)


@pytest.mark.parametrize(("num_entries", "embedding_dim"), [(1, 512), (4, 512), (16, 512), (3, 96)])
def test_divisible_sizes_are_accepted(num_entries: int, embedding_dim: int) -> None:
    cfg = ModelConfig(num_entries=num_entries, embedding_dim=embedding_dim)
    assert cfg.branches == num_entries


def test_baseline_ignores_num_entries() -> None:
    cfg = ModelConfig(attention="none", num_entries=7, embedding_dim=512)
    assert cfg.branches == 1 and cfg.variant == "baseline"


@pytest.mark.parametrize("num_entries", [0, -2, 2.0])
def test_num_entries_must_be_a_positive_int(num_entries: object) -> None:
    with pytest.raises(ValueError, match="num_entries"):
        ModelConfig(num_entries=num_entries)  # type: ignore[arg-type]


@pytest.mark.parametrize("embedding_dim", [0, -512, 512.0])
def test_embedding_dim_must_be_a_positive_int(embedding_dim: object) -> None:
    with pytest.raises(ValueError, match="embedding_dim"):
        ModelConfig(embedding_dim=embedding_dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, -1.0, -1e-9, math.nan])
def test_alpha_must_be_positive(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        ModelConfig(alpha=alpha)


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 100.0])
def test_positive_alpha_is_accepted(alpha: float) -> None:
    assert ModelConfig(alpha=alpha).alpha == alpha


@pytest.mark.parametrize("pretrained", ["", None])
def test_pretrained_must_be_a_non_empty_string(pretrained: object) -> None:
    with pytest.raises(ValueError, match="pretrained"):
        ModelConfig(pretrained=pretrained)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attention", "selection", "variant", "branches"),
    [("pre", "feature", "pre-feature", 8), ("post", "dimension", "post-dimension", 8),
     ("none", "feature", "baseline", 1)],
)
def test_variant_and_branches(attention: str, selection: str, variant: str, branches: int) -> None:
    cfg = ModelConfig(attention=attention, selection=selection)
    assert cfg.variant == variant and cfg.branches == branches


def test_config_is_frozen() -> None:
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="post", selection="feature",
                    num_entries=4, embedding_dim=128, alpha=2.5, learn_alpha=True, rescale=False, freeze_bn=False),
        ModelConfig(attention="none", pretrained="/some/where/weights.pth"),
    ],
)
def test_round_trip_through_json(cfg: ModelConfig) -> None:
    data = json.loads(json.dumps(cfg.to_dict()))
    assert set(data) == {f.name for f in dataclasses.fields(ModelConfig)}
    back = ModelConfig.from_dict(data)
    assert back == cfg and back.to_dict() == cfg.to_dict()


def test_from_dict_refuses_unknown_fields() -> None:
    data = {**ModelConfig().to_dict(), "dictionary_init": "kmeans"}
    with pytest.raises(ValueError, match="dictionary_init"):
        ModelConfig.from_dict(data)


def test_from_dict_validates_values() -> None:
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "backbone": "vgg16"})


def test_from_dict_fills_missing_fields_with_defaults() -> None:
    assert ModelConfig.from_dict({"backbone": "mobilenet_v2"}) == ModelConfig(backbone="mobilenet_v2")


def test_replace_revalidates() -> None:
    cfg = ModelConfig()
    assert cfg.replace(num_entries=4).num_entries == 4
    with pytest.raises(ValueError, match="alpha"):
        cfg.replace(alpha=0.0)
