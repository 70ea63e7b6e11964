"""diablo.checkpoint: round trips, atomic writes, refusal of anything that is not a checkpoint, digests
(recomputed here from the file's raw bytes; tampered files written with safetensors itself), and device
resolution."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diablo
from diablo.checkpoint import (
    UnverifiedCheckpointWarning,
    checkpoint_digest,
    read_checkpoint,
    read_metadata,
    resolve_device,
    stamp_checkpoint,
)

LEGACY = "ignore::diablo.checkpoint.UnverifiedCheckpointWarning"  # files written here without digests


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


@pytest.mark.filterwarnings(LEGACY)
def test_invalid_config_json_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"diablo_format": "1", "model_config": "{oops"})
    with pytest.raises(ValueError, match="invalid model config"):
        diablo.load_checkpoint(path, device="cpu")


@pytest.mark.filterwarnings(LEGACY)
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


# ----------------------------------------------------------------------------- digests


def _raw(path: Path) -> tuple[dict[str, tuple[str, list[int], bytes]], dict[str, str]]:
    """The file read by hand (the safetensors layout: u64 little-endian header length, JSON header,
    then the data): {name: (dtype, shape, bytes)} and the string metadata."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", {})
    body = data[8 + length :]
    return {name: (h["dtype"], h["shape"], body[h["data_offsets"][0] : h["data_offsets"][1]])
            for name, h in header.items()}, metadata


def _expected_weights_digest(tensors: dict[str, tuple[str, list[int], bytes]]) -> str:
    """The documented scheme: per name in sorted order, json([name, dtype, shape]) + newline, then the bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        digest.update((json.dumps([name, dtype, shape]) + "\n").encode())
        digest.update(data)
    return digest.hexdigest()


def _rewrite(source: Path, target: Path, **changes: str | None) -> Path:
    """Copy a checkpoint with safetensors itself, its metadata strings changed (None: removed)."""
    with safe_open(str(source), framework="pt") as file:
        metadata = dict(file.metadata())
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file(tensors, str(target), metadata=metadata)
    return target


def _saved(tmp_path: Path, dtype: str = "float32", **meta) -> Path:
    model, cfg = _model("pre", "feature", learn_alpha=False)
    return diablo.save_checkpoint(tmp_path / f"m-{dtype}.safetensors", model, cfg,
                                  meta={"note": "x", **meta}, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_recorded_digests_match_the_files_bytes(tmp_path, dtype):
    path = _saved(tmp_path, dtype)
    tensors, metadata = _raw(path)
    assert metadata["config_sha256"] == hashlib.sha256(metadata["model_config"].encode()).hexdigest()
    assert metadata["meta_sha256"] == hashlib.sha256(metadata["meta"].encode()).hexdigest()
    assert metadata["weights_sha256"] == _expected_weights_digest(tensors)
    stored = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    assert tensors["selection.dictionary"][0] == stored  # the digest is of what is stored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diablo.load_checkpoint(path, device="cpu")


def test_float16_export_verifies_and_a_flipped_half_is_refused(tmp_path):
    path = _saved(tmp_path, "float16")
    loaded, _, _ = diablo.load_checkpoint(path, device="cpu")
    assert next(loaded.parameters()).dtype == torch.float32
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    start = json.loads(data[8 : 8 + length])["selection.dictionary"]["data_offsets"][0]
    data[8 + length + start] ^= 0x01  # the first byte of the dictionary
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tensors no longer match"):
        diablo.load_checkpoint(path, device="cpu")


@pytest.mark.parametrize(
    ("key", "edit"),
    [("model_config", lambda c: {**c, "alpha": 20.0}), ("model_config", lambda c: {**c, "rescale": False}),
     ("model_config", lambda c: {**c, "learn_alpha": True}), ("meta", lambda m: {**m, "note": "edited"}),
     ("meta", lambda m: {**m, "test_metrics": {"recall@1": 0.99}})],
    ids=["alpha", "rescale", "learn_alpha", "meta-note", "meta-metrics"],
)
def test_edited_json_metadata_is_refused(tmp_path, key, edit):
    path = _saved(tmp_path)
    _, metadata = _raw(path)
    tampered = _rewrite(path, tmp_path / "tampered.safetensors", **{key: json.dumps(edit(json.loads(metadata[key])))})
    for read in (read_metadata, read_checkpoint, checkpoint_digest,
                 lambda p: diablo.load_checkpoint(p, device="cpu")):
        with pytest.raises(ValueError, match=f"its {key} metadata no longer matches") as info:
            read(tampered)
        assert "\n" not in str(info.value) and str(tampered) in str(info.value)


def test_a_reformatted_config_is_refused_too(tmp_path):
    """The digest is of the stored string: the same values written differently no longer match it."""
    path = _saved(tmp_path)
    _, metadata = _raw(path)
    reformatted = json.dumps(json.loads(metadata["model_config"]), indent=1)
    tampered = _rewrite(path, tmp_path / "t.safetensors", model_config=reformatted)
    with pytest.raises(ValueError, match="model_config"):
        read_metadata(tampered)


def test_changed_tensor_is_refused_by_load_and_read_checkpoint(tmp_path):
    path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as file:
        metadata = dict(file.metadata())
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    tensors["embedding.bias"] = tensors["embedding.bias"].clone()
    tensors["embedding.bias"][0, 0] += 1e-3
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata=metadata)
    for read in (read_checkpoint, lambda p: diablo.load_checkpoint(p, device="cpu"),
                 lambda p: checkpoint_digest(p, verify=True)):
        with pytest.raises(ValueError, match="weights_sha256") as info:
            read(tampered)
        assert "\n" not in str(info.value)
    assert read_metadata(tampered)[1] == {"note": "x"}  # the metadata alone is intact


def test_a_removed_digest_is_refused(tmp_path):
    path = _saved(tmp_path)
    tampered = _rewrite(path, tmp_path / "t.safetensors", weights_sha256=None)
    with pytest.raises(ValueError, match="weights_sha256 removed"):
        read_metadata(tampered)


def _legacy(tmp_path: Path, name: str = "old.safetensors") -> Path:
    """A checkpoint as written before digests existed."""
    return _rewrite(_saved(tmp_path), tmp_path / name, config_sha256=None, meta_sha256=None, weights_sha256=None)


def test_a_file_without_digests_loads_with_one_warning(tmp_path):
    old = _legacy(tmp_path)
    with pytest.warns(UnverifiedCheckpointWarning, match="no digests") as record:
        model, cfg, meta = diablo.load_checkpoint(old, device="cpu")
        read_metadata(old)
        read_checkpoint(old)
    assert len(record) == 1 and str(old) in str(record[0].message)
    assert meta == {"note": "x"} and cfg.attention == "pre"
    other = _legacy(tmp_path, "other.safetensors")
    with pytest.warns(UnverifiedCheckpointWarning):
        read_metadata(other)


def test_stamping_an_old_file_keeps_its_tensors_and_metadata(tmp_path):
    old = _legacy(tmp_path)
    tensors_before, metadata_before = _raw(old)
    with pytest.warns(UnverifiedCheckpointWarning):
        stamp_checkpoint(old)
    tensors_after, metadata_after = _raw(old)
    assert tensors_after == tensors_before
    assert {k: metadata_after[k] for k in metadata_before} == metadata_before
    assert metadata_after["weights_sha256"] == _expected_weights_digest(tensors_after)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diablo.load_checkpoint(old, device="cpu")
        assert stamp_checkpoint(old) == old  # already stamped: left as it is
    assert _raw(old) == (tensors_after, metadata_after)


def test_checkpoint_digest_names_config_and_weights_not_meta(tmp_path):
    model, cfg = _model("post", "feature")
    a = diablo.save_checkpoint(tmp_path / "a.safetensors", model, cfg, meta={"run": 1})
    b = diablo.save_checkpoint(tmp_path / "b.safetensors", model, cfg, meta={"run": 2, "history": [1, 2]})
    digest = checkpoint_digest(a)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert checkpoint_digest(b) == digest == checkpoint_digest(a, verify=True)
    expected = hashlib.sha256(
        f"{json.dumps(cfg.to_dict(), sort_keys=True)}\n{_raw(a)[1]['weights_sha256']}\n".encode()
    ).hexdigest()
    assert digest == expected
    other_alpha = diablo.save_checkpoint(tmp_path / "c.safetensors", model, cfg.replace(alpha=20.0))
    assert checkpoint_digest(other_alpha) != digest  # same tensors (alpha is fixed), other model
    with torch.no_grad():
        model.embedding.bias[0, 0] += 1.0
    other_weights = diablo.save_checkpoint(tmp_path / "d.safetensors", model, cfg, meta={"run": 1})
    assert checkpoint_digest(other_weights) != digest
    half = diablo.save_checkpoint(tmp_path / "e.safetensors", model, cfg, dtype="float16")
    assert checkpoint_digest(half) != checkpoint_digest(other_weights)  # what is stored differs


def test_checkpoint_digest_of_an_old_file_is_that_of_its_stamped_copy(tmp_path):
    old = _legacy(tmp_path)
    with pytest.warns(UnverifiedCheckpointWarning):
        before = checkpoint_digest(old)
    stamp_checkpoint(old)
    assert checkpoint_digest(old) == before


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["bogus", "", "cuda:x", "gpu"])
def test_resolve_device_refuses_what_torch_cannot_parse(device):
    with pytest.raises(ValueError, match="available: auto, cpu") as info:
        resolve_device(device)
    assert repr(device) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("device", [3, None, ["cpu"]], ids=repr)
def test_resolve_device_refuses_non_strings(device):
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


def test_resolve_device_refuses_cuda_and_mps_when_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1), "mps"):
        with pytest.raises(ValueError, match="not available here; available: auto, cpu$") as info:
            resolve_device(device)
        assert "\n" not in str(info.value)


def test_resolve_device_refuses_a_cuda_index_beyond_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="'cuda:2' is not available here; available: auto, cpu, cuda, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_load_checkpoint_refuses_a_bad_device_before_reading(tmp_path):
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        diablo.load_checkpoint(tmp_path / "does-not-matter.safetensors", device="bogus")
