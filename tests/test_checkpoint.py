"""diablo.checkpoint: round trips, atomic writes, and refusal of anything that is not a checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import torch
from safetensors.torch import save_file

import diablo
from diablo.checkpoint import read_checkpoint, resolve_device


def _model(attention: str = "pre", selection: str = "dimension", **kw) -> tuple[diablo.DiabloNet, diablo.ModelConfig]:
    cfg = diablo.ModelConfig(
        backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
        num_entries=4, embedding_dim=64, **kw,
    )
    torch.manual_seed(0)
    return diablo.build_model(cfg).eval(), cfg


@pytest.mark.parametrize("attention,selection", [("none", "feature"), ("pre", "dimension"), ("post", "feature")])
def test_round_trip_gives_identical_outputs(tmp_path, attention, selection):
    model, cfg = _model(attention, selection, learn_alpha=True)
    meta = {"test_metrics": {"recall@1": 0.5}, "history": [{"epoch": 0, "loss": 1.0}]}
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg, meta=meta)
    loaded, cfg2, meta2 = diablo.load_checkpoint(path, device="cpu")
    assert cfg2 == cfg and meta2 == meta
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_fp16_checkpoint_is_smaller_and_close(tmp_path):
    model, cfg = _model()
    full = diablo.save_checkpoint(tmp_path / "a.safetensors", model, cfg)
    half = diablo.save_checkpoint(tmp_path / "b.safetensors", model, cfg, dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _, _ = diablo.load_checkpoint(half, device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=2e-2)
        assert next(loaded.parameters()).dtype == torch.float32


def test_written_file_has_ordinary_permissions_and_no_leftovers(tmp_path):
    model, cfg = _model("none")
    path = diablo.save_checkpoint(tmp_path / "sub" / "m.safetensors", model, cfg)
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert os.listdir(path.parent) == ["m.safetensors"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model, cfg = _model("none")
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg, meta={"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("diablo.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        diablo.save_checkpoint(path, model, cfg, meta={"v": 2})
    assert read_checkpoint(path)[2] == {"v": 1}
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        diablo.load_checkpoint(tmp_path / "nope.safetensors")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 10, b"\xff" * 8 + b"{}", pickle.dumps({"a": 1}), pickle.dumps(Evil())],
    ids=["empty", "garbage", "bad-header", "pickle", "hostile-pickle"],
)
def test_non_checkpoints_are_refused(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a diablo checkpoint") as info:
        diablo.load_checkpoint(path, device="cpu")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    model, cfg = _model("none")
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a diablo checkpoint"):
        diablo.load_checkpoint(path, device="cpu")


def test_safetensors_without_diablo_metadata_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no diablo_format"):
        diablo.load_checkpoint(path, device="cpu")


def test_invalid_config_json_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"diablo_format": "1", "model_config": "{oops"})
    with pytest.raises(ValueError, match="invalid model config"):
        diablo.load_checkpoint(path, device="cpu")


def test_shape_mismatch_names_the_tensor(tmp_path):
    model, cfg = _model("pre", "feature")
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg)
    tensors, _, meta = read_checkpoint(path)
    tensors["selection.dictionary"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={
        "diablo_format": "1", "model_config": json.dumps(cfg.to_dict()), "meta": json.dumps(meta)})
    with pytest.raises(ValueError, match="selection.dictionary"):
        diablo.load_checkpoint(bad, device="cpu")


def test_config_of_other_variant_is_a_mismatch(tmp_path):
    model, cfg = _model("pre", "feature")
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg.replace(attention="none"))
    with pytest.raises(ValueError, match="does not match"):
        diablo.load_checkpoint(path, device="cpu")


def test_load_never_reads_backbone_weights(tmp_path, monkeypatch):
    model, cfg = _model("none")
    path = diablo.save_checkpoint(tmp_path / "m.safetensors", model, cfg.replace(pretrained="imagenet"))
    monkeypatch.setattr("diablo.backbones.weight_path", lambda *a: pytest.fail("looked for backbone weights"))
    _, cfg2, _ = diablo.load_checkpoint(path, device="cpu")
    assert cfg2.pretrained == "imagenet"


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_resolve_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device is taken as given
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
