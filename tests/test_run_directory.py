"""diablo.run_directory: an epoch's end survives death at every file-system boundary.

Deterministic fault injection: the process "dies" (a BaseException that nothing catches, after
which every further file operation fails too, so temporary files stay behind as after a kill -9)
before the k-th file operation (fsync, chmod, link, rename, unlink) of epoch 2's commit, for every
k. After each death: every file in the directory loads, a restart makes last / best / train_state /
metrics.jsonl agree with the manifest, and `--resume` ends with the same history as a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from training_run import flags

import diablo
from diablo import train as train_module
from diablo.checkpoint import read_metadata
from diablo.config import TrainConfig
from diablo.run_directory import RunDirectory, RunDirectoryError, load_optimiser

OPERATIONS = ("fsync", "chmod", "link", "replace", "unlink")
VOLATILE = ("time_s", "images_per_s")  # the only fields of a history row that differ between runs


class Killed(BaseException):
    """The process died here."""


@contextmanager
def dying(monkeypatch: pytest.MonkeyPatch, at: int | None, seen: list[str]):
    """Count file operations; from the `at`-th one on, each raises Killed."""
    real = {name: getattr(os, name) for name in OPERATIONS}

    def wrap(name: str):
        def operation(*args, **kwargs):
            seen.append(name)
            if at is not None and len(seen) >= at:
                raise Killed(f"died at {name} #{len(seen)}")
            return real[name](*args, **kwargs)
        return operation

    with monkeypatch.context() as patch:
        for name in OPERATIONS:
            patch.setattr(os, name, wrap(name))
        yield


def die_in_commit(monkeypatch: pytest.MonkeyPatch, epoch: int, at: int | None) -> list[str]:
    """Make RunDirectory.commit of `epoch` die at its `at`-th file operation; returns the operations seen."""
    seen: list[str] = []
    commit = RunDirectory.commit

    def dying_commit(self, manifest, *args):
        if manifest.epoch != epoch:
            return commit(self, manifest, *args)
        with dying(monkeypatch, at, seen):
            return commit(self, manifest, *args)

    monkeypatch.setattr(RunDirectory, "commit", dying_commit)
    return seen


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in history]


def assert_consistent(out: Path) -> dict:
    """After a restart: the derived files say what run.json says; returns the manifest."""
    manifest = json.loads((out / "run.json").read_text())
    history = manifest["history"]
    assert [row["epoch"] for row in history] == list(range(manifest["epoch"] + 1))
    assert read_metadata(out / "last.safetensors")[1]["epoch"] == manifest["epoch"]
    scores = [row.get("recall@1", -1.0) for row in history]
    assert manifest["best_epoch"] == scores.index(max(scores))  # the first of the best
    assert read_metadata(out / "best.safetensors")[1]["epoch"] == manifest["best_epoch"]
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == history
    assert not list(out.glob(".*.tmp")) and not list((out / "epochs").glob(".*.tmp"))
    kept = {f"{manifest['epoch']:04d}.safetensors", f"{manifest['epoch']:04d}.state.safetensors",
            f"{manifest['best_epoch']:04d}.safetensors"}
    assert {f.name for f in (out / "epochs").iterdir()} == kept
    return manifest


def assert_every_file_loads(out: Path) -> None:
    """Every checkpoint loads, and every optimiser state loads into the run's optimiser."""
    files = [*out.glob("*.safetensors"), *(out / "epochs").glob("*.safetensors")]
    states = [f for f in files if f.name.endswith("state.safetensors")]
    for path in set(files) - set(states):
        diablo.load_checkpoint(path, device="cpu")
    config = TrainConfig(**read_metadata(out / "last.safetensors")[1]["train_config"])
    for path in states:
        load_optimiser(path, train_module.optimiser(diablo.build_model(config.model_config()), config))


@pytest.fixture(scope="module")
def one_epoch(folder, tmp_path_factory) -> Path:
    """A run committed at epoch 1 (of 3), copied by each scenario."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    return out


@pytest.fixture(scope="module")
def uninterrupted(one_epoch, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(one_epoch, out)
    assert train_module.main(["--resume", str(out), "--epochs", "3"]) == 0
    return json.loads((out / "run.json").read_text())["history"]


def operations_of_a_commit(one_epoch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out = tmp_path / "count"
    shutil.copytree(one_epoch, out)
    seen = die_in_commit(monkeypatch, 2, None)
    assert train_module.main(["--resume", str(out), "--epochs", "3"]) == 0
    monkeypatch.undo()
    return seen


def test_death_at_every_boundary_of_an_epochs_end(one_epoch, uninterrupted, tmp_path, monkeypatch):
    operations = operations_of_a_commit(one_epoch, tmp_path, monkeypatch)
    assert {"fsync", "replace", "link"} <= set(operations)
    for at in range(1, len(operations) + 1):
        out = tmp_path / f"death-{at}"
        shutil.copytree(one_epoch, out)
        die_in_commit(monkeypatch, 2, at)
        with pytest.raises(Killed):
            train_module.main(["--resume", str(out), "--epochs", "3"])
        monkeypatch.undo()
        assert_every_file_loads(out)
        RunDirectory(out).recover()  # what the next start does first
        manifest = assert_consistent(out)
        assert manifest["epoch"] in (1, 2), f"death at {operations[at - 1]} #{at}"
        assert train_module.main(["--resume", str(out), "--epochs", "3"]) == 0
        manifest = assert_consistent(out)
        assert stable(manifest["history"]) == stable(uninterrupted), f"death at {operations[at - 1]} #{at}"


def test_epoch_zero_is_the_untrained_model(folder, tmp_path):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out)) == 0
    history = assert_consistent(out)["history"]
    assert history[0]["epoch"] == 0 and history[0]["step"] == 0 and "loss" not in history[0]
    assert 0 <= history[0]["recall@1"] <= 1


def test_a_new_run_refuses_a_directory_that_holds_one(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    before = (out / "best.safetensors").read_bytes(), (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train_module.main(flags(folder, out, "--epochs", "1", "--seed", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    assert ((out / "best.safetensors").read_bytes(), (out / "metrics.jsonl").read_text()) == before
    (out / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it alone
    assert train_module.main(flags(folder, out, "--epochs", "1", "--seed", "5", "--overwrite")) == 0
    assert read_metadata(out / "last.safetensors")[1]["train_config"]["seed"] == 5
    assert (out / "notes.txt").read_text() == "mine"
    assert [row["epoch"] for row in assert_consistent(out)["history"]] == [0, 1]


def test_resume_applies_the_new_learning_rate(folder, tmp_path):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1", "--lr", "1e-4")) == 0
    assert train_module.main(["--resume", str(out), "--epochs", "2", "--lr", "0.5"]) == 0
    _, meta = read_metadata(out / "last.safetensors")
    assert meta["train_config"]["lr"] == 0.5
    config = TrainConfig(**meta["train_config"])
    opt = train_module.optimiser(diablo.build_model(config.model_config()), config)
    load_optimiser(out / "train_state.safetensors", opt)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5 * config.new_lr_factor]
    assert meta["history"][-1]["lr"] == 0.5


@pytest.mark.parametrize("given", [["--max-per-class", "3"], ["--entries", "4"], ["--attention", "post"],
                                   ["--image-size", "64"], ["--dataset", "synthetic"], ["--seed", "3"]])
def test_resume_refuses_what_it_cannot_change(folder, tmp_path, capsys, given):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    with pytest.raises(SystemExit) as info:
        train_module.main(["--resume", str(out), *given])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert given[0] in err and "cannot change on --resume" in err


def test_recover_removes_debris_and_uncommitted_epochs(folder, tmp_path):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    (out / ".last.safetensors.abc.tmp").write_bytes(b"x" * 100)
    (out / "epochs" / ".0002.safetensors.def.tmp").write_bytes(b"x")
    shutil.copy(out / "last.safetensors", out / "epochs" / "0002.safetensors")  # written, never committed
    (out / "metrics.jsonl").write_text("")  # a lost line
    RunDirectory(out).recover()
    assert assert_consistent(out)["epoch"] == 1


def test_a_run_from_before_the_manifest_is_migrated(folder, tmp_path):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    (out / "run.json").unlink()
    shutil.rmtree(out / "epochs")  # last, best, train_state and metrics.jsonl remain, as runs wrote them
    assert train_module.main(["--resume", str(out), "--epochs", "2"]) == 0
    assert [row["epoch"] for row in assert_consistent(out)["history"]] == [0, 1, 2]


def test_damaged_files_give_one_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_module.main(flags(folder, out, "--epochs", "1")) == 0
    state = out / "epochs" / "0001.state.safetensors"
    data = state.read_bytes()
    (out / "train_state.safetensors").unlink()
    state.write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    assert train_module.main(["--resume", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0001.state.safetensors" in err
    (out / "run.json").write_text("{not json")
    with pytest.raises(SystemExit):
        train_module.main(["--resume", str(out), "--epochs", "2"])
    assert "run.json" in capsys.readouterr().err


@pytest.mark.parametrize("out, message", [("file", "is a file"), ("/proc/diablo-run", "cannot write")])
def test_unusable_out_is_refused_before_work(folder, tmp_path, capsys, monkeypatch, out, message):
    if out == "file":
        out = tmp_path / "file"
        out.write_text("a file")
    started = []
    monkeypatch.setattr(train_module, "restore", lambda *a: started.append(1))
    assert train_module.main(flags(folder, Path(out))) == 2
    assert not started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_manifest_errors_are_run_directory_errors(tmp_path):
    with pytest.raises(RunDirectoryError, match="holds no run"):
        RunDirectory(tmp_path).manifest()
