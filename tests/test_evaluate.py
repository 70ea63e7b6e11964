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
def _fresh_scan_cache(scan_cache: Path) -> Path:
    """Every test here caches its image scans in a fresh folder (`scan_cache`, tests/conftest.py)."""
    return scan_cache


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


# ---- --index: a built gallery index scored without re-embedding ------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_gallery import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


def build(checkpoint: Path, root: Path, out: Path, *extra: str) -> Path:
    """`python -m diablo.index build` of the folder's test split, on the CPU, its scan cached in a fresh folder."""
    from diablo.gallery_commands import main as index_main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIABLO_CACHE", str(out.parent / "cache"))
        argv = ["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(root), "--out", str(out)]
        assert index_main([*argv, "--device", "cpu", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def built(tiny: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tiny, folder, tmp_path_factory.mktemp("built") / "index")


def report_of(argv: list[str], out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    assert cli.main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_an_exact_index_scores_as_embedding_the_split(
    built: Path, tiny: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    direct, _ = report_of(
        ["--checkpoint", str(tiny), "--dataset", "folder", "--root", str(folder), "--device", "cpu", "--quiet"],
        tmp_path / "direct.json",
        capsys,
    )
    scored, table = report_of(["--index", str(built), "--checkpoint", str(tiny)], tmp_path / "index.json", capsys)
    assert scored["metrics"] == direct["metrics"]  # exactly: the same embeddings, the same exact ranking
    assert list(scored["metrics"]) == ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi"]
    for key in ("dataset", "split", "image_size", "sizes", "skipped", "skipped_files", "without_positive"):
        assert scored[key] == direct[key], key
    assert scored["sizes"] == {"test": 24} and scored["image_size"] == 32
    assert scored["search"] == "exact" and scored["index"] == str(built)
    lines = table.splitlines()
    assert lines[0] == (
        f"{built} on folder: 24 test images evaluated, 0 unreadable files skipped, 0 queries without a positive"
    )
    assert lines[1].split()[:2] == ["search", "exact"]
    assert f"{100 * direct['metrics']['recall@1']:6.2f}" in lines[2]
    # The checkpoint is optional: the recorded one is reported.
    alone, _ = report_of(["--index", str(built), "--no-nmi"], tmp_path / "alone.json", capsys)
    assert alone["checkpoint"] == str(tiny.resolve()) and "nmi" not in alone["metrics"]
    assert alone["metrics"] == {k: v for k, v in direct["metrics"].items() if k != "nmi"}


def test_an_approximate_index_is_scored_through_its_search_and_says_so(
    tiny: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An IVF-Flat index of 24 items has one list, so its search is exhaustive: the metrics are the
    exact ones, reached through the approximate path."""
    index = build(tiny, folder, tmp_path / "ivf", "--index", "ivf-flat")
    exact, _ = report_of(["--index", str(build(tiny, folder, tmp_path / "flat"))], tmp_path / "flat.json", capsys)
    scored, table = report_of(["--index", str(index)], tmp_path / "ivf.json", capsys)
    assert scored["search"] == "approximate" and scored["index_params"]["type"] == "ivf-flat"
    assert scored["index_params"]["nlist"] == 1
    assert scored["metrics"] == pytest.approx(exact["metrics"], abs=1e-12)
    assert "approximate: the index's ivf-flat search, nprobe 1 of 1 lists" in table.splitlines()[1]


def approximate_expected(index, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@K and MAP@R of what the IVF index's own faiss search returns, one query at a time."""
    x, labels = index.embeddings, index.labels
    n = len(labels)
    hits = {k: 0 for k in ks}
    precisions = []
    for i in range(n):
        r = int((labels == labels[i]).sum()) - 1
        want = max(*ks, r)
        _, ids = index.index.search(x[i : i + 1], want + 1)
        found = [int(j) for j in ids[0] if j != i and j >= 0][:want]
        relevant = [labels[j] == labels[i] for j in found]
        for k in ks:
            hits[k] += any(relevant[:k])
        if r:
            precisions.append(
                sum(sum(relevant[: p + 1]) / (p + 1) for p in range(r) if p < len(relevant) and relevant[p]) / r
            )
    return {**{f"recall@{k}": hits[k] / n for k in ks}, "map@r": float(np.mean(precisions))}


def test_index_metrics_of_an_approximate_index_count_only_what_its_search_returns() -> None:
    from diablo.index import GalleryIndex

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 50)  # 2000 items, R = 49
    x = centres[labels] + rng.normal(scale=1.2, size=(len(labels), 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    index = GalleryIndex.build(x, labels, kind="ivf-flat")
    index.index.nprobe = 1  # a narrow search: it misses neighbours
    got = cli.index_metrics(index, (1, 4, 16), with_nmi=False)
    expected = approximate_expected(index, (1, 4, 16))
    assert got == pytest.approx(expected, abs=1e-9)
    exact = evaluate_metrics(x, labels, (1, 4, 16), with_nmi=False)
    assert abs(got["map@r"] - exact["map@r"]) > 0.01  # the approximate search's figures, not exact ones


def test_index_refuses_another_checkpoint(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tiny_gallery import tiny_checkpoint

    other = tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    capsys.readouterr()
    assert cli.main(["--index", str(built), "--checkpoint", str(other)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m diablo.evaluate: error: ")
    assert "another model than the one" in err
    assert cli.main(["--index", str(built), "--checkpoint", str(tmp_path / "none.safetensors")]) == 1
    assert "none.safetensors" in capsys.readouterr().err


INDEX_CONFLICTS = [
    (["--dataset", "cub"], "argument --dataset: {index} was built with --dataset folder, not cub"),
    (["--split", "all"], "argument --split: {index} was built with --split test, not all"),
    (["--image-size", "48"], "argument --image-size: {index} was built with --image-size 32, not 48"),
    (["--root", "{tmp}"], "argument --root: {index} was built with --root {folder}, not {tmp}"),
    (["--batch-size", "8"], "argument --batch-size: nothing is embedded with --index"),
    (["--num-workers", "0"], "argument --num-workers: nothing is embedded with --index"),
    (["--device", "cpu"], "argument --device: nothing is embedded with --index"),
]


@pytest.mark.parametrize(("extra", "message"), INDEX_CONFLICTS, ids=[" ".join(a) for a, _ in INDEX_CONFLICTS])
def test_index_refuses_conflicting_flags(
    extra: list[str], message: str, built: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    names = {"index": built, "tmp": tmp_path, "folder": folder.resolve()}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--index", str(built), *(a.format(**names) for a in extra)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m diablo.evaluate: error: ")
    assert message.format(**names) in err


def test_index_accepts_flags_that_match_its_build(
    built: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--index", str(built), "--dataset", "folder", "--split", "test", "--image-size", "32"]
    report, _ = report_of([*argv, "--root", str(folder), "--no-nmi"], tmp_path / "r.json", capsys)
    assert report["sizes"] == {"test": 24}


def test_index_that_cannot_be_scored_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from diablo.index import GalleryIndex

    assert cli.main(["--index", str(tmp_path)]) == 1
    assert "not a gallery index" in capsys.readouterr().err
    GalleryIndex.build(np.eye(4, dtype=np.float32), np.arange(4), key="k").save(tmp_path / "cache")
    assert cli.main(["--index", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no build" in err


def test_checkpoint_and_dataset_are_required_without_index(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--checkpoint", "m"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "the following arguments are required: --dataset (or --index DIR)" in err
