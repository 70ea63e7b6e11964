"""python -m diablo.index build | search | info: answers checked against numpy, one-line errors,
exit status 2 for usage and 1 for failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_gallery import IMAGE_SIZE, tiny_checkpoint

import diablo
from diablo.data import build_transform, open_image
from diablo.gallery_commands import main
from diablo.index import GalleryIndex, open_index


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def built(folder, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "index"
    code = main(["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(folder),
                 "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_search_answers_the_exact_top_k(built, checkpoint, folder, capsys) -> None:
    capsys.readouterr()
    images = [folder / "class5" / "2.png", folder / "class0" / "1.png"]  # one gallery image, one from train
    assert main(["search", str(built), "--image", str(images[0]), "--image", str(images[1]), "-k", "4",
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, _, _ = diablo.load_checkpoint(checkpoint, device="cpu")
    transform = build_transform(train=False, image_size=IMAGE_SIZE)
    with torch.inference_mode():
        q = model(torch.stack([transform(open_image(p)) for p in images])).numpy()  # (2, 16)
    index = open_index(built)
    g = index.embeddings
    expected = np.argsort(-(q.astype(np.float64) @ g.astype(np.float64).T), axis=1, kind="stable")[:, :4]
    assert [[hit["id"] for hit in entry["results"]] for entry in report["queries"]] == expected.tolist()
    first = report["queries"][0]["results"][0]
    assert first["path"] == str(images[0]) and first["class"] == "class5" and first["similarity"] == pytest.approx(1)
    assert report["exact"] is True and report["checkpoint"] == str(checkpoint.resolve())
    assert main(["search", str(built), "--image", str(images[0]), "-k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "2 nearest of 24" in lines[0] and lines[1].split()[:3] == ["1", "1.0000", "class5"]


def test_info(built, capsys) -> None:
    capsys.readouterr()
    assert main(["info", str(built)]) == 0
    text = capsys.readouterr().out
    assert "24 (D = 16, 2 branch(es))" in text and "flat (exact inner product)" in text
    assert "folder, split test" in text and "0 unreadable file(s)" in text and "diablo.index build" in text
    assert main(["info", str(built), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["build"]["count"] == 24


def test_a_checkpoint_of_another_model_is_refused(built, tmp_path, capsys) -> None:
    other = tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    capsys.readouterr()
    image = open_index(built).paths[0]
    assert main(["search", str(built), "--image", image, "--checkpoint", str(other), "--device", "cpu"]) == 1
    assert "another model" in one_error_line(capsys)


def test_usage_errors_exit_2_and_failures_exit_1(built, checkpoint, folder, tmp_path, capsys) -> None:
    usage = [
        ["build", "--checkpoint", str(checkpoint), "--dataset", "folder"],  # no --out
        ["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--split", "query", "--out", "x"],
        ["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--batch-size", "0", "--out", "x"],
        ["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--device", "gpu9", "--out", "x"],
        ["search", str(built), "--image", "x.png", "-k", "0"],
        ["info"],
        ["rebuild", str(built)],
    ]
    for argv in usage:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert one_error_line(capsys).startswith("python -m diablo.index")
    # A conflicting build is a usage error too: another --out or --overwrite.
    assert main(["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(folder),
                 "--image-size", "40", "--out", str(built), "--device", "cpu", "--quiet"]) == 2
    assert "--overwrite" in one_error_line(capsys)
    # Failures: nothing to open, an unreadable image, a missing checkpoint or dataset.
    assert main(["info", str(tmp_path)]) == 1
    assert "not a gallery index" in one_error_line(capsys)
    assert main(["search", str(built), "--image", str(tmp_path / "none.png"), "--device", "cpu"]) == 1
    assert "none.png" in one_error_line(capsys)
    assert main(["build", "--checkpoint", str(tmp_path / "no.safetensors"), "--dataset", "folder", "--root",
                 str(folder), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 1
    one_error_line(capsys)
    assert main(["build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 1
    one_error_line(capsys)
    # A lab cache records no checkpoint: search needs --checkpoint.
    GalleryIndex.build(np.eye(16, dtype=np.float32), np.arange(16), key="k").save(tmp_path / "cache")
    assert main(["search", str(tmp_path / "cache"), "--image", "x.png"]) == 2
    assert "--checkpoint" in one_error_line(capsys)
