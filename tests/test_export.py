"""diablo.export: onnxruntime reproduces the PyTorch model (embedding and attention maps) at other
batch and image sizes than the traced ones; the checkpoint's config and meta round-trip through
metadata_props; bad input gives one line and an exit code.

The expected side is always the PyTorch model; the tested side is onnxruntime on the written file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from diablo.checkpoint import load_checkpoint, save_checkpoint
from diablo.config import ModelConfig
from diablo.export import export_onnx, main, read_onnx_metadata
from diablo.model import DiabloNet, build_model

VARIANTS = ["baseline", "pre-feature", "pre-dimension", "post-feature", "post-dimension"]
TRACE_SIZE = 64
BATCHES = (1, 3)  # the graph is traced at batch 2
SIZES = ((48, 48), (96, 80))  # (height, width), neither the traced 64 x 64


def _config(variant: str) -> ModelConfig:
    attention, selection = ("none", "feature") if variant == "baseline" else variant.split("-")
    return ModelConfig(backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
                       num_entries=2, embedding_dim=16)


def _model(variant: str) -> DiabloNet:
    """A small untrained model whose embedding depends on the image.

    An untrained MobileNetV2's BatchNorm statistics (mean 0, variance 1) let the activations
    vanish layer after layer, so that every image would get the same embedding (the bias) and any
    comparison would pass. One train-mode pass with cumulative statistics calibrates them.
    """
    torch.manual_seed(VARIANTS.index(variant))
    model = build_model(_config(variant))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, TRACE_SIZE, TRACE_SIZE))
    return model.eval()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_close(got: np.ndarray, expected: torch.Tensor) -> None:
    """Cosine >= 0.9999 per sample and max abs difference <= 1e-4."""
    got_t = torch.from_numpy(got)
    assert got_t.shape == expected.shape
    assert (got_t - expected).abs().max().item() <= 1e-4
    cosine = nnf.cosine_similarity(got_t.flatten(1).double(), expected.flatten(1).double(), dim=1)
    assert cosine.min().item() >= 0.9999


# The baseline goes through the command line, from a checkpoint with this meta; the DIABLO variants
# through export_onnx with the attention output. Each file is written once per module (an export
# takes seconds).
CLI_META = {"test_metrics": {"recall@1": 0.4231, "map@r": 0.103}, "train_config": {"image_size": 56, "lr": 1e-4},
            "history": [{"epoch": 1, "loss": 1.5}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[DiabloNet, Path]]:
    """variant -> (the PyTorch model, its ONNX file)."""
    cache: dict[str, tuple[DiabloNet, Path]] = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(variant: str) -> tuple[DiabloNet, Path]:
        if variant in cache:
            return cache[variant]
        if variant == "baseline":
            checkpoint = save_checkpoint(folder / "baseline.safetensors", _model(variant), _config(variant),
                                         meta=CLI_META)
            out = folder / "cli" / "baseline.onnx"
            assert main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
            model = load_checkpoint(checkpoint, device="cpu")[0]
        else:
            model = _model(variant)
            out = export_onnx(model, _config(variant), {"note": variant}, folder / f"{variant}.onnx",
                              attention=True, image_size=TRACE_SIZE)
        cache[variant] = (model, out)
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_reproduces_the_embedding(exported, variant: str) -> None:
    model, path = exported(variant)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    torch.manual_seed(100)
    for batch in BATCHES:
        for height, width in SIZES:
            x = torch.randn(batch, 3, height, width)
            with torch.no_grad():
                expected = model(x)
            # The comparison means something only if the embedding depends on the image.
            if batch > 1:
                assert (expected - expected.mean(0)).abs().max().item() > 0.05
            got = session.run(["embedding"], {"images": x.numpy()})[0]
            _assert_close(got, expected)


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_attention_output_matches_inspect(exported, variant: str) -> None:
    model, path = exported(variant)
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["embedding", "attention"]
    torch.manual_seed(200)
    for batch in BATCHES:
        for height, width in SIZES:
            x = torch.randn(batch, 3, height, width)
            with torch.no_grad():
                expected = model.inspect(x).attention
            assert expected.shape[:2] == (batch, 2)
            assert expected.std().item() > 1e-3  # not uniform: the maps select
            got = session.run(["attention"], {"images": x.numpy()})[0]
            _assert_close(got, expected)


def test_library_export_records_config_and_meta(exported) -> None:
    _, path = exported("post-dimension")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["model_config"]) == _config("post-dimension").to_dict()
    assert json.loads(props["meta"]) == {"note": "post-dimension"}
    assert props["variant"] == "post-dimension"
    assert props["outputs"] == "embedding,attention"
    assert props["image_size"] == str(TRACE_SIZE)
    assert int(props["min_image_size"]) >= 1


def test_cli_exports_a_checkpoint_with_its_metadata(exported, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, out = exported("baseline")
    assert sorted(p.name for p in out.parent.iterdir()) == ["baseline.onnx"]  # no temporary file left
    _, config, meta = load_checkpoint(out.parent.parent / "baseline.safetensors", device="cpu")
    assert meta["test_metrics"] == CLI_META["test_metrics"]
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["model_config"]) == config.to_dict() == _config("baseline").to_dict()
    assert json.loads(props["meta"]) == meta
    assert props["variant"] == "baseline"
    assert props["image_size"] == "56"  # the training size, from the meta's train_config
    decoded = read_onnx_metadata(out)
    assert decoded["model_config"] == config.to_dict() and decoded["meta"] == meta
    assert [o.name for o in _session(out).get_outputs()] == ["embedding"]


def _checkpoint(tmp_path: Path, variant: str) -> Path:
    return save_checkpoint(tmp_path / f"{variant}.safetensors", build_model(_config(variant)), _config(variant))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_cli_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "not found" in _one_error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.safetensors"
    bogus.write_text("not a checkpoint\n")
    assert main(["--checkpoint", str(bogus), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "not a diablo checkpoint" in _one_error_line(capsys)


def test_cli_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _checkpoint(tmp_path, "baseline")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--checkpoint", str(checkpoint), "--out", str(blocker / "m.onnx")]) == 1
    assert "not a folder" in _one_error_line(capsys)
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 1  # a folder
    assert "is a folder" in _one_error_line(capsys)
    assert blocker.read_text() == "x"


def test_cli_attention_of_a_baseline_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _checkpoint(tmp_path, "baseline")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--attention"])
    assert exit_info.value.code == 2
    assert "no attention maps" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_library_rejects_bad_arguments(tmp_path: Path) -> None:
    model, config = build_model(_config("baseline")).eval(), _config("baseline")
    with pytest.raises(ValueError, match="no attention maps"):
        export_onnx(model, config, None, tmp_path / "m.onnx", attention=True)
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(model, config, None, tmp_path / "m.onnx", image_size=0)
    with pytest.raises(ValueError, match="not the one the model was built from"):
        export_onnx(model, config.replace(embedding_dim=32), None, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
