"""`python -m diablo.evaluate`: the table, the JSON, In-Shop query vs gallery, unreadable files,
queries without a positive, and one-line errors."""

from __future__ import annotations

import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import diablo
import diablo.data as real_data
from diablo import evaluate as cli
from diablo.evaluation import evaluate as evaluate_metrics


def write_corrupt(path: Path, kind: str) -> Path:
    """An unreadable image file: a PNG or JPEG cut in half, an empty file, or text named .jpg."""
    if kind in ("png", "jpeg"):
        noise = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format=kind.upper())
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    else:
        path.write_text("" if kind == "empty" else "not an image\n")
    return path


@pytest.fixture(autouse=True)
def scan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The image scan caches into a fresh folder, not the user's."""
    root = tmp_path_factory.mktemp("diablo-cache")
    monkeypatch.setenv("DIABLO_CACHE", str(root))
    return root


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
    assert report["skipped"] == {"test": 0} and report["skipped_files"] == {"test": []}
    assert report["without_positive"] == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == (
        "m.safetensors on cub: 5 test images evaluated, 0 unreadable files skipped, 0 queries without a positive"
    )
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
    err = capsys.readouterr().err
    assert "no checkpoint at nope" in err and err.count("\n") == 1


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
    assert report["sizes"] == {"all": 6} and report["skipped"] == {"all": 0}
    assert 0.0 <= report["metrics"]["recall@1"] <= 1.0
    # the CLI's figure is the library's on the same checkpoint and images
    model, _, _ = diablo.load_checkpoint(tmp_path / "m.safetensors", device="cpu")
    data = diablo.load_dataset("folder", split="all", root=tmp_path / "images", image_size=32)
    expected = diablo.recall_at_k(*diablo.embed(model, data, progress=False), ks=(1,))[1]
    assert report["metrics"]["recall@1"] == pytest.approx(expected)


# ---- unreadable files: left out, counted, never substituted ------------------------------------


def write_folder(root: Path, classes: int = 6, per_class: int = 3) -> Path:
    """Class folders of noisy images of one colour per class."""
    rng = np.random.default_rng(1)
    for c in range(classes):
        colour = rng.integers(0, 255, 3)
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 60, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, untrained checkpoint (MobileNetV2 without attention, 16-D embeddings)."""
    path = tmp_path_factory.mktemp("checkpoint") / "m.safetensors"
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="none", embedding_dim=16)
    torch.manual_seed(0)
    diablo.save_checkpoint(path, diablo.build_model(cfg), cfg, meta={})
    return path


def cli_report(checkpoint: Path, root: Path, out: Path, *extra: str) -> dict:
    args = ["--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(root), "--image-size", "32"]
    assert cli.main([*args, "--device", "cpu", "--json", str(out), "--quiet", *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", ["checkpoint", "mean colour"])
def test_corrupt_files_leave_the_metrics_of_the_readable_set(
    model: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key property: a set with unreadable files scores as the same set without those files
    (a real untrained checkpoint, and a model that embeds the mean colour, so R@1 is high)."""
    if model == "mean colour":
        monkeypatch.setattr(diablo, "load_checkpoint", lambda path, device="auto": (MeanColour(), None, {}))
    clean = write_folder(tmp_path / "clean")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(clean, corrupt)
    broken = [  # test classes are class3..class5 (the second half); one file in a train class too
        write_corrupt(corrupt / "class3" / "truncated.png", "png"),
        write_corrupt(corrupt / "class3" / "truncated.jpg", "jpeg"),
        write_corrupt(corrupt / "class4" / "empty.png", "empty"),
        write_corrupt(corrupt / "class5" / "text.jpg", "text"),
        write_corrupt(corrupt / "class0" / "train-side.jpg", "jpeg"),
    ]
    expected = cli_report(checkpoint, clean, tmp_path / "clean.json")
    capsys.readouterr()
    got = cli_report(checkpoint, corrupt, tmp_path / "corrupt.json")
    out, err = capsys.readouterr()
    assert expected["sizes"] == {"test": 9} and expected["skipped"] == {"test": 0}
    assert got["sizes"] == expected["sizes"]  # 9 images evaluated, not 13
    assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-6)
    assert got["metrics"]["recall@1"] == pytest.approx(expected["metrics"]["recall@1"], abs=0)
    assert got["skipped"] == {"test": 4}
    assert sorted(got["skipped_files"]["test"]) == sorted(str(p) for p in broken[:4])
    assert got["without_positive"] == expected["without_positive"] == 0
    if model == "mean colour":
        assert expected["metrics"]["recall@1"] > 0.5  # an informative embedding, not ties
    assert "9 test images evaluated, 4 unreadable files skipped" in out.splitlines()[0]
    assert err.startswith("warning: folder/test: dropped 4 unreadable") and err.count("\n") == 1


def test_report_counts_queries_without_positive(fakes: dict, tmp_path: Path, monkeypatch) -> None:
    labels = [0, 0, 1, 2, 2, 3, 3, 3, 4]  # classes 1 and 4 have one image: 2 queries without a positive
    points = np.random.default_rng(0).normal(size=(len(labels), 2))
    monkeypatch.setitem(SPLITS, "test", PointDataset(points, labels))
    out = tmp_path / "m.json"
    assert cli.main(["--checkpoint", "m", "--dataset", "cub", "--json", str(out), "--no-nmi", "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["without_positive"] == 2
    assert report["metrics"]["recall@4"] <= 1 - 2 / len(labels)  # each of them is a miss
    # In-Shop: a query class absent from the gallery
    monkeypatch.setitem(SPLITS, "query", PointDataset(np.eye(2)[[0, 1, 0]], [0, 1, 7]))
    assert cli.main(["--checkpoint", "m", "--dataset", "inshop", "--json", str(out), "--no-nmi", "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["without_positive"] == 1 and report["sizes"] == {"query": 3, "gallery": 3}
    assert report["metrics"]["recall@2"] == pytest.approx(2 / 3)


# ---- bad input: one line on stderr, exit 2, before anything is loaded -----------------------------

BAD_ARGUMENTS = [
    (["--image-size", "0"], "--image-size: must be at least 1, got 0"),
    (["--image-size", "-8"], "--image-size: must be at least 1, got -8"),
    (["--image-size", "big"], "--image-size: expected an integer, got 'big'"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--num-workers", "-1"], "--num-workers: must be at least 0"),
    (["--dataset", "imagenet"], "--dataset: invalid choice: 'imagenet'"),
    (["--split", "val"], "--split: invalid choice: 'val'"),
    (["--split", "all"], "'all' is not a split of cub"),
    (["--dataset", "inshop", "--split", "all"], "'all' is not a split of inshop"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda"], "--device cuda: no CUDA GPU is available"),
    (["--device", "cuda:0"], "--device cuda:0: no CUDA GPU is available"),
    (["--device", "mps"], "--device mps: MPS is not available"),
    (["--device", "meta"], "unsupported device type 'meta'"),
    (["--json", "{tmp}"], "is a folder"),
    (["--json", "{tmp}/a-file/report.json"], "a-file is not a folder"),
    (["--json", "/proc/diablo-report.json"], "cannot write in /proc"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_in_one_line_before_any_work(
    extra: list[str], message: str, fakes: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    (tmp_path / "a-file").write_text("a file, not a folder")
    argv = ["--checkpoint", "m", "--dataset", "cub", "--quiet", *(a.format(tmp=tmp_path) for a in extra)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m diablo.evaluate: error: ")
    assert message in err
    assert "checkpoint" not in fakes and fakes["datasets"] == []  # nothing was loaded


def test_missing_arguments_and_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--dataset", "cub"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--checkpoint" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "{cub,cars,sop,inshop,folder,fashion-mnist,synthetic}" in help_text
    assert "the dataset to search" in help_text and "inshop: train, query, gallery" in help_text


def test_an_existing_gpu_index_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli.device_problem("cuda") is None and cli.device_problem("cuda:1") is None
    assert "there are 2 CUDA device(s)" in cli.device_problem("cuda:2")
    assert cli.device_problem("cpu") is None and cli.device_problem("auto") is None


# ---- failures while running: one line on stderr, exit 1 ------------------------------------------


class MeanColour(nn.Module):
    """Embeds an image as its normalised mean colour: a cheap stand-in for a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x.mean(dim=(2, 3)), dim=1)


@pytest.fixture
def mean_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diablo, "load_checkpoint", lambda path, device="auto": (MeanColour(), None, {}))


def delete_after_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """diablo.load_dataset as it is, then the first image of the set removed (a file gone mid-run)."""
    real = diablo.load_dataset

    def load(*args, **kwargs):
        data = real(*args, **kwargs)
        Path(data.paths[0]).unlink()
        return data

    monkeypatch.setattr(diablo, "load_dataset", load)


RUN_FAILURES = [
    ("missing root", [], "does not exist or is not a folder"),
    ("no readable file", ["--split", "all"], "none of its 4 image files is readable"),
    ("file gone mid-run", [], "error: cannot read image"),
    ("file gone mid-run, in a worker", ["--num-workers", "1"], "error: cannot read image"),
]


@pytest.mark.parametrize(("case", "extra", "message"), RUN_FAILURES, ids=[c for c, _, _ in RUN_FAILURES])
def test_run_failures_exit_1_in_one_line(
    case: str, extra: list[str], message: str, mean_colour: None, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = write_folder(tmp_path / "set", classes=2, per_class=2)
    if case == "missing root":
        root = tmp_path / "nowhere"
    elif case == "no readable file":
        for kind, path in zip(("png", "jpeg", "empty", "text"), sorted(root.rglob("*.png")), strict=True):
            write_corrupt(path, kind)
    else:
        delete_after_load(monkeypatch)
    argv = ["--checkpoint", "m", "--dataset", "folder", "--root", str(root), "--quiet", "--device", "cpu", *extra]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m diablo.evaluate: error: ")
    assert message in err
    if "mid-run" in case:
        assert "class1" in err and "Traceback" not in err  # the file is named
        assert "(FileNotFoundError: No such file or directory); it was readable when the dataset was built" in err


def test_the_report_is_written_atomically_where_asked(fakes: dict, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "m.json"
    out.parent.mkdir(parents=True)
    out.write_text("old")
    assert cli.main(["--checkpoint", "m", "--dataset", "cub", "--json", str(out), "--no-nmi", "--quiet"]) == 0
    assert json.loads(out.read_text())["sizes"] == {"test": 5}
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # no temporary file left


def test_the_module_entry_point_fails_in_one_line() -> None:
    import subprocess

    argv = [sys.executable, "-m", "diablo.evaluate", "--checkpoint", "m", "--dataset", "cub", "--image-size", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "python -m diablo.evaluate: error: argument --image-size: must be at least 1, got 0\n"
