"""`python -m diablo.evaluate`: the table, the JSON, In-Shop query vs gallery, errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import diablo
import diablo.data as real_data
from diablo import evaluate as cli
from diablo.evaluation import evaluate as evaluate_metrics


class PointDataset(Dataset):
    """Items (2-D point, label): the fake model embeds a point as itself, normalised."""

    def __init__(self, points: np.ndarray, labels: list[int]) -> None:
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.points[i], self.labels[i]


class Normalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1)


SPLITS = {
    "test": PointDataset(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]]), [0, 0, 1, 1, 0]),
    "query": PointDataset(np.array([[1, 0], [0, 1], [1, 1]]), [0, 1, 2]),
    "gallery": PointDataset(np.array([[0, 1], [1, 0.1], [5, 4]]), [1, 0, 2]),
}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand-ins for diablo.load_checkpoint (its meta is calls["meta"]), diablo.load_dataset
    and diablo.data's K lists; diablo.data.default_image_size is the real one."""
    calls: dict = {"datasets": [], "meta": {}}

    def load_checkpoint(path, device="auto"):
        calls["checkpoint"] = (str(path), device)
        return Normalise(), object(), calls["meta"]

    def load_dataset(name, split="train", root=None, image_size=224, **kwargs):
        calls["datasets"].append((name, split, root, image_size))
        return SPLITS[split]

    data = types.ModuleType("diablo.data")
    data.K_LIST = {"cub": (1, 2, 4), "inshop": (1, 2)}
    data.k_list = lambda name: data.K_LIST.get(name, (1, 2, 4, 8))
    data.default_image_size = real_data.default_image_size
    data.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "diablo.data", data)
    monkeypatch.setattr(diablo, "load_checkpoint", load_checkpoint, raising=False)
    monkeypatch.setattr(diablo, "load_dataset", load_dataset, raising=False)
    return calls


def test_leave_one_out_table_and_json(fakes: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "metrics.json"
    args = [
        "--checkpoint",
        "m.safetensors",
        "--dataset",
        "cub",
        "--root",
        "data",
        "--image-size",
        "64",
        "--device",
        "cpu",
        "--json",
        str(out),
        "--quiet",
    ]
    assert cli.main(args) == 0
    assert fakes["checkpoint"] == ("m.safetensors", "cpu")
    assert fakes["datasets"] == [("cub", "test", "data", 64)]
    report = json.loads(out.read_text())
    data = SPLITS["test"]
    x = nn.functional.normalize(data.points, dim=1).numpy()
    assert report["metrics"] == pytest.approx(evaluate_metrics(x, np.array(data.labels), (1, 2, 4)))
    assert list(report["metrics"]) == ["recall@1", "recall@2", "recall@4", "map@r", "nmi"]
    assert report["sizes"] == {"test": 5}
    table = capsys.readouterr().out
    for name in ("Recall@1", "Recall@4", "MAP@R", "NMI"):
        assert name in table
    assert f"{100 * report['metrics']['recall@1']:6.2f}" in table


def test_inshop_searches_the_gallery(fakes: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert cli.main(["--checkpoint", "m", "--dataset", "inshop", "--json", str(out), "--no-nmi", "--quiet"]) == 0
    assert [split for _, split, _, _ in fakes["datasets"]] == ["query", "gallery"]
    metrics = json.loads(out.read_text())["metrics"]
    # Query 0 -> gallery 1 (label 0), query 1 -> gallery 0 (label 1), query 2 -> gallery 2 (label 2).
    assert metrics == {"recall@1": 1.0, "recall@2": 1.0, "map@r": 1.0}


def test_unknown_dataset_uses_default_ks_and_errors_exit_1(
    fakes: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SPLITS, "all", SPLITS["test"])
    assert cli.main(["--checkpoint", "m", "--dataset", "folder", "--split", "all", "--quiet"]) == 0
    assert "Recall@8" in capsys.readouterr().out

    def missing(path, device="auto"):
        raise FileNotFoundError(f"no checkpoint at {path}")

    monkeypatch.setattr(diablo, "load_checkpoint", missing)
    assert cli.main(["--checkpoint", "nope", "--dataset", "cub"]) == 1
    assert "no checkpoint at nope" in capsys.readouterr().err


def test_image_size_defaults_to_the_checkpoints_then_the_datasets(fakes: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    base = ["--checkpoint", "m", "--dataset", "cub", "--json", str(out), "--no-nmi", "--quiet"]
    fakes["meta"] = {"train_config": {"image_size": 96, "epochs": 3}}
    assert cli.main(base) == 0
    assert fakes["datasets"][-1] == ("cub", "test", None, 96)
    assert json.loads(out.read_text())["image_size"] == 96
    assert cli.main([*base, "--image-size", "48"]) == 0  # the flag wins
    assert fakes["datasets"][-1] == ("cub", "test", None, 48)
    fakes["meta"] = {"epoch": 3}  # no train_config: the dataset's default
    assert cli.main(base) == 0
    assert fakes["datasets"][-1] == ("cub", "test", None, real_data.DEFAULT_IMAGE_SIZE["cub"])
    assert json.loads(out.read_text())["image_size"] == 256


def test_end_to_end_with_real_checkpoint_and_folder(tmp_path: Path) -> None:
    """The real diablo.load_checkpoint and diablo.load_dataset("folder")."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "images" / f"class{c}").mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class{c}" / f"{i}.png")
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="none", embedding_dim=16)
    torch.manual_seed(0)
    diablo.save_checkpoint(tmp_path / "m.safetensors", diablo.build_model(cfg), cfg, meta={})
    out = tmp_path / "metrics.json"
    args = [
        "--checkpoint",
        str(tmp_path / "m.safetensors"),
        "--dataset",
        "folder",
        "--root",
        str(tmp_path / "images"),
        "--split",
        "all",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--json",
        str(out),
        "--quiet",
    ]
    assert cli.main(args) == 0
    report = json.loads(out.read_text())
    assert report["sizes"] == {"all": 6}
    assert 0.0 <= report["metrics"]["recall@1"] <= 1.0
    # the CLI's figure is the library's on the same checkpoint and images
    model, _, _ = diablo.load_checkpoint(tmp_path / "m.safetensors", device="cpu")
    data = diablo.load_dataset("folder", split="all", root=tmp_path / "images", image_size=32)
    expected = diablo.recall_at_k(*diablo.embed(model, data, progress=False), ks=(1,))[1]
    assert report["metrics"]["recall@1"] == pytest.approx(expected)
