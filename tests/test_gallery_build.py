"""diablo.gallery_build: embeddings equal diablo.evaluation.embed, shards resume after a crash,
conflicting builds are refused, float16 and skipped files are recorded, two gloo processes build
the same index as one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_gallery import IMAGE_SIZE, tiny_checkpoint

import diablo
import diablo.evaluation
from diablo.checkpoint import checkpoint_digest
from diablo.data import build_transform
from diablo.gallery_build import BuildConflict, build_index
from diablo.index import open_index

ROOT = Path(__file__).resolve().parents[1]
SHARD = 5  # the 24 test images of the folder fixture in shards of 5, 5, 5, 5, 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def reference(folder, checkpoint) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """diablo.evaluation.embed of the test split at 32 px, computed apart from any build: in batches
    of SHARD (the build's batches: the same floating-point sums) and in one batch of 64."""
    model, _, _ = diablo.load_checkpoint(checkpoint, device="cpu")
    data = diablo.load_dataset("folder", split="test", root=folder,
                               transform=build_transform(train=False, image_size=IMAGE_SIZE))
    emb, labels = diablo.evaluation.embed(model, data, batch_size=SHARD, progress=False)
    one_batch, _ = diablo.evaluation.embed(model, data, batch_size=64, progress=False)
    return emb, labels, data.paths, one_batch


@pytest.fixture(scope="module")
def built(folder, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "index"
    outcome = build_index(checkpoint, "folder", out, root=folder, shard_size=SHARD, device="cpu", progress=False,
                          command="test")
    assert outcome.status == "built" and outcome.embedded == 5 and outcome.reused == 0
    return out


def exact_top(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ g.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def test_build_equals_embed_and_records_the_build(built, reference, checkpoint, folder) -> None:
    emb, labels, paths, one_batch = reference
    index = open_index(built)
    np.testing.assert_array_equal(index.embeddings, emb)
    np.testing.assert_allclose(index.embeddings, one_batch, atol=2e-5)  # other batches: other rounding
    np.testing.assert_array_equal(index.labels, labels)
    assert index.paths == paths and index.classes == ["class4", "class5", "class6", "class7"]
    assert index.exact and index.num_branches == 2 and len(index) == 24
    b = index.build
    assert b["checkpoint"] == {"path": str(checkpoint.resolve()), "digest": checkpoint_digest(checkpoint)}
    assert (b["dataset"], b["split"], b["root"], b["image_size"], b["count"]) == ("folder", "test", str(folder), 32, 24)
    assert b["skipped"] == [] and b["world_size"] == 1 and b["command"] == "test" and b["dtype"] == "float32"
    shards = index.manifest["embeddings"]["shards"]
    assert [(s["start"], s["count"]) for s in shards] == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 4)]
    np.testing.assert_array_equal(index.search(emb, 6).ids, exact_top(index.embeddings, index.embeddings, 6))


def test_a_crashed_build_resumes_with_the_missing_shards(folder, checkpoint, built, tmp_path, monkeypatch) -> None:
    real = diablo.evaluation.embed
    calls: list[int] = []

    def crash_on_third(model, data, *args, **kwargs):
        calls.append(len(data))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(diablo.evaluation, "embed", crash_on_third)
    out = tmp_path / "index"
    with pytest.raises(RuntimeError, match="killed"):
        build_index(checkpoint, "folder", out, root=folder, shard_size=SHARD, device="cpu", progress=False)
    done = sorted(p.name for p in (out / "shards").glob("0*.npy"))
    assert done == ["00000.npy", "00001.npy"] and not (out / "gallery.json").exists()
    before = {name: (out / "shards" / name).stat().st_mtime_ns for name in done}
    calls.clear()
    monkeypatch.setattr(diablo.evaluation, "embed", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    outcome = build_index(checkpoint, "folder", out, root=folder, shard_size=SHARD, device="cpu", progress=False)
    assert calls == [5, 5, 4] and (outcome.embedded, outcome.reused) == (3, 2)  # shards 2, 3 and 4 only
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in done} == before
    np.testing.assert_array_equal(open_index(out).embeddings, open_index(built).embeddings)


def test_up_to_date_conflicts_and_overwrite(folder, checkpoint, built, tmp_path) -> None:
    out = tmp_path / "index"
    shutil.copytree(built, out)
    again = build_index(checkpoint, "folder", out, root=folder, shard_size=SHARD, device="cpu", progress=False)
    assert again.status == "up to date" and again.embedded == 0
    with pytest.raises(BuildConflict, match="another build .*image_size"):
        build_index(checkpoint, "folder", out, root=folder, shard_size=SHARD, image_size=40, device="cpu",
                    progress=False)
    (out / "gallery.json").unlink()  # now only the shards of the 32 px build are there
    with pytest.raises(BuildConflict, match="shards of another build .*shard_size"):
        build_index(checkpoint, "folder", out, root=folder, shard_size=7, device="cpu", progress=False)
    outcome = build_index(checkpoint, "folder", out, root=folder, shard_size=12, kind="ivf-flat", overwrite=True,
                          device="cpu", progress=False)
    assert outcome.status == "built" and outcome.embedded == 2
    index = open_index(out)
    assert index.kind == "ivf-flat" and sorted(p.name for p in (out / "shards").glob("0*.npy")) == ["00000.npy",
                                                                                                    "00001.npy"]
    g = index.embeddings
    np.testing.assert_allclose(g, open_index(built).embeddings, atol=2e-5)  # batches of 12, not 5
    np.testing.assert_array_equal(index.search(g, 5).ids, exact_top(g, g, 5))  # one list: exhaustive


def test_float16_and_skipped_files(folder, checkpoint, reference, tmp_path, capsys) -> None:
    root = tmp_path / "folder"
    shutil.copytree(folder, root)
    broken = root / "class5" / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "index"
    build_index(checkpoint, "folder", out, root=root, float16=True, device="cpu", progress=False)
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "broken.png" in warned[0]
    index = open_index(out)
    assert index.build["skipped"] == [str(broken)] and index.build["dtype"] == "float16" and len(index) == 24
    shard = np.load(out / "shards" / "00000.npy")
    assert shard.dtype == np.float16
    np.testing.assert_array_equal(index.embeddings, shard.astype(np.float32))  # the index holds the stored values
    np.testing.assert_allclose(index.embeddings, reference[0], atol=2e-3)


def test_bad_arguments_fail_before_work(folder, checkpoint, tmp_path) -> None:
    with pytest.raises(ValueError, match="shard_size"):
        build_index(checkpoint, "folder", tmp_path, root=folder, shard_size=0)
    with pytest.raises(ValueError, match="unknown index type"):
        build_index(checkpoint, "folder", tmp_path, root=folder, kind="hnsw")
    with pytest.raises(FileNotFoundError):
        build_index(tmp_path / "missing.safetensors", "folder", tmp_path, root=folder, device="cpu")
    assert not (tmp_path / "shards").exists()


def test_torchrun_two_gloo_processes_build_the_same_index(folder, checkpoint, built, tmp_path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diablo.index", "build", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(folder),
           "--out", str(out), "--shard-size", str(SHARD), "--device", "cpu", "--quiet"]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("built") == 1  # rank 0 reports
    index, single = open_index(out), open_index(built)
    assert index.build["world_size"] == 2 and index.build["plan"] == single.build["plan"]
    np.testing.assert_allclose(index.embeddings, single.embeddings, atol=1e-6)
    np.testing.assert_array_equal(index.labels, single.labels)
    assert index.paths == single.paths
    g = single.embeddings
    a, b = index.search(g, 8), single.search(g, 8)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-6)
