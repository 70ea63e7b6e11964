"""diablo.config: validation of every field (one ValueError line each), the paper's defaults, the JSON
round trip, and the HELP / CHOICES tables of TrainConfig."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from diablo.config import (
    ATTENTIONS,
    BACKBONES,
    CHOICES,
    HELP,
    PRESETS,
    SCHEDULES,
    SELECTIONS,
    ModelConfig,
    TrainConfig,
)

NOT_INTS = [True, False, 2.0, "2", None]
NOT_REALS = ["10", math.inf, -math.inf, math.nan, True, False, None, [1.0]]
NOT_BOOLS = ["no", "yes", "False", 0, 1, None, np.bool_(True)]


def _refused(make, field: str) -> str:
    """The one-line ValueError message of `make()`, which must name `field`."""
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert field in message and "\n" not in message, message
    return message


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


@pytest.mark.parametrize("alpha", NOT_REALS, ids=repr)
def test_alpha_must_be_a_finite_real_number(alpha: object) -> None:
    message = _refused(lambda: ModelConfig(alpha=alpha), "alpha")
    assert repr(alpha) in message


@pytest.mark.parametrize(("alpha", "stored"), [(10, 10.0), (np.float32(2.5), 2.5), (np.int64(3), 3.0)])
def test_alpha_is_stored_as_a_float(alpha: object, stored: float) -> None:
    cfg = ModelConfig(alpha=alpha)  # type: ignore[arg-type]
    assert cfg.alpha == stored and type(cfg.alpha) is float
    assert json.loads(json.dumps(cfg.to_dict()))["alpha"] == stored


@pytest.mark.parametrize("field", ["learn_alpha", "rescale", "freeze_bn"])
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_flags_must_be_real_bools(field: str, value: object) -> None:
    _refused(lambda: ModelConfig(**{field: value}), field)


@pytest.mark.parametrize("field", ["learn_alpha", "rescale", "freeze_bn"])
def test_flags_accept_bools(field: str) -> None:
    for value in (True, False):
        assert getattr(ModelConfig(**{field: value}), field) is value


@pytest.mark.parametrize("field", ["num_entries", "embedding_dim"])
@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_sizes_must_be_ints_not_bools_or_floats(field: str, value: object) -> None:
    _refused(lambda: ModelConfig(**{field: value}), field)


def test_numpy_ints_are_stored_as_ints() -> None:
    cfg = ModelConfig(num_entries=np.int64(4), embedding_dim=np.int32(64))  # type: ignore[arg-type]
    assert (type(cfg.num_entries), type(cfg.embedding_dim)) == (int, int)
    assert json.dumps(cfg.to_dict())  # JSON-serialisable


@pytest.mark.parametrize("field", ["backbone", "attention", "selection"])
@pytest.mark.parametrize("value", [None, 1, ("pre",)], ids=repr)
def test_choices_must_be_strings(field: str, value: object) -> None:
    _refused(lambda: ModelConfig(**{field: value}), field)


def test_model_config_takes_any_weights_path() -> None:
    """A checkpoint keeps the path it was trained from; it need not exist where it is loaded."""
    assert ModelConfig(pretrained="/not/here/weights.pth").pretrained == "/not/here/weights.pth"


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


# ----------------------------------------------------------------------------- TrainConfig


def _train(**changes: object) -> TrainConfig:
    base = dict(backbone="mobilenet_v2", pretrained="none", image_size=64)
    return TrainConfig(**{**base, **changes})


def test_train_defaults_and_every_preset_are_valid_with_a_constant_schedule() -> None:
    configs = [TrainConfig()] + [TrainConfig(**preset) for preset in PRESETS.values()]
    for cfg in configs:
        assert (cfg.schedule, cfg.warmup_steps, cfg.min_lr_factor) == ("constant", 0, 0.0)


def test_train_config_round_trips_through_json() -> None:
    cfg = _train(schedule="cosine", warmup_steps=10, min_lr_factor=0.1, alpha=3, lr=1)
    back = TrainConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert type(cfg.alpha) is float and type(cfg.lr) is float  # model fields are normalised too


def test_a_stored_train_config_without_the_schedule_fields_gets_the_defaults() -> None:
    old = {k: v for k, v in _train().to_dict().items() if k not in ("schedule", "warmup_steps", "min_lr_factor")}
    assert TrainConfig(**old).schedule == "constant"


def test_schedules() -> None:
    assert SCHEDULES == ("constant", "cosine")
    assert _train(schedule="cosine", warmup_steps=5, min_lr_factor=1.0).schedule == "cosine"


@pytest.mark.parametrize(
    ("field", "value"),
    [("schedule", "linear"), ("schedule", "Cosine"), ("warmup_steps", -1), ("warmup_steps", 2.0),
     ("warmup_steps", True), ("min_lr_factor", -0.01), ("min_lr_factor", 1.01), ("min_lr_factor", math.nan),
     ("min_lr_factor", "0.1")],
)
def test_schedule_fields_are_checked(field: str, value: object) -> None:
    _refused(lambda: _train(**{field: value}), field)


@pytest.mark.parametrize(("field", "value"), [("min_lr_factor", 0), ("min_lr_factor", 1), ("warmup_steps", 0)])
def test_schedule_bounds_are_accepted(field: str, value: object) -> None:
    assert getattr(_train(**{field: value}), field) == value


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_train_choice_fields_name_their_allowed_values(field: str) -> None:
    message = _refused(lambda: _train(**{field: "bogus"}), field)
    for value in CHOICES[field]:
        assert value in message


def test_choices_are_the_allowed_tuples() -> None:
    import diablo.data

    assert set(CHOICES) == {"dataset", "backbone", "attention", "selection", "loss", "dictionary_init", "schedule"}
    assert CHOICES["dataset"] == diablo.data.DATASETS
    assert CHOICES["backbone"] == BACKBONES and CHOICES["attention"] == ATTENTIONS
    assert CHOICES["selection"] == SELECTIONS and CHOICES["schedule"] == SCHEDULES
    assert set(CHOICES["loss"]) == {"contrastive", "triplet", "binomial"}
    assert set(CHOICES["dictionary_init"]) == {"random", "shared", "kmeans"}
    defaults = TrainConfig()
    for field, allowed in CHOICES.items():
        assert isinstance(allowed, tuple) and getattr(defaults, field) in allowed


def test_help_has_one_line_for_every_train_field() -> None:
    assert set(HELP) == {f.name for f in dataclasses.fields(TrainConfig)}
    for field, text in HELP.items():
        assert isinstance(text, str) and text.strip() and "\n" not in text, field


# (field, smallest accepted value, a refused value below it)
INT_BOUNDS = [("classes_per_batch", 2, 1), ("images_per_class", 2, 1), ("epochs", 1, 0), ("steps_per_epoch", 1, 0),
              ("max_per_class", 0, -1), ("seed", 0, -1), ("workers", 0, -1), ("batch_size_eval", 1, 0),
              ("eval_every", 1, 0), ("max_steps", 0, -1), ("warmup_steps", 0, -1)]


@pytest.mark.parametrize(("field", "lowest", "below"), INT_BOUNDS)
def test_train_int_bounds(field: str, lowest: int, below: int) -> None:
    assert getattr(_train(**{field: lowest}), field) == lowest
    _refused(lambda: _train(**{field: below}), field)


@pytest.mark.parametrize("field", [f for f, _, _ in INT_BOUNDS] + ["image_size", "num_entries"])
@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_train_ints_must_be_ints(field: str, value: object) -> None:
    _refused(lambda: _train(**{field: value}), field)


def test_one_class_per_batch_is_refused() -> None:
    """A batch of one class has no negative pairs: the triplet loss is 0 and nothing is learned."""
    _refused(lambda: _train(classes_per_batch=1), "classes_per_batch")


@pytest.mark.parametrize(("backbone", "minimum"), [("googlenet", 32), ("mobilenet_v2", 32)])
def test_image_size_at_least_the_backbones_minimum(backbone: str, minimum: int) -> None:
    """The minima of diablo.backbones.MIN_IMAGE_SIZE, each network's stride (tests/test_backbones.py runs them)."""
    assert _train(backbone=backbone, image_size=minimum).image_size == minimum
    message = _refused(lambda: _train(backbone=backbone, image_size=minimum - 1), "image_size")
    assert str(minimum) in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", 0.0), ("lr", -1e-5), ("lr", math.inf), ("lr", math.nan), ("lr", "1e-5"), ("lr", True),
     ("new_lr_factor", 0), ("new_lr_factor", math.inf), ("dictionary_lr_factor", -1.0),
     ("weight_decay", -1e-9), ("weight_decay", math.nan),
     ("weight_decay", "0"), ("val_fraction", 1.0), ("val_fraction", -0.1), ("val_fraction", math.nan),
     ("val_fraction", True), ("alpha", "10"), ("alpha", math.inf)],
)
def test_train_reals_are_finite_and_in_range(field: str, value: object) -> None:
    _refused(lambda: _train(**{field: value}), field)


@pytest.mark.parametrize(("field", "value"), [("lr", 1), ("weight_decay", 0), ("val_fraction", 0.0),
                                              ("val_fraction", 0.99), ("new_lr_factor", 10)])
def test_train_reals_in_range_are_accepted_as_floats(field: str, value: float) -> None:
    stored = getattr(_train(**{field: value}), field)
    assert stored == value and type(stored) is float


@pytest.mark.parametrize("field", ["amp", "channels_last", "progress", "learn_alpha", "rescale", "freeze_bn"])
@pytest.mark.parametrize("value", ["no", 0, None], ids=repr)
def test_train_flags_must_be_real_bools(field: str, value: object) -> None:
    _refused(lambda: _train(**{field: value}), field)


@pytest.mark.parametrize(("field", "value"), [("device", ""), ("device", None), ("out", ""), ("out", 3),
                                              ("root", ""), ("root", 3)])
def test_train_strings(field: str, value: object) -> None:
    _refused(lambda: _train(**{field: value}), field)


def test_pretrained_must_be_none_imagenet_or_an_existing_file(tmp_path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    for value in ("none", "imagenet", str(weights)):
        assert _train(pretrained=value).pretrained == value
    for value in ("imagnet", "ImageNet", str(tmp_path / "missing.pth"), str(tmp_path), "", None):
        _refused(lambda value=value: _train(pretrained=value), "pretrained")
