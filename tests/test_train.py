"""diablo.train: a tiny end-to-end run, resume (also after a kill mid-epoch), divergence, CLI, torchrun."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from training_run import flags

import diablo
from diablo import dictionary
from diablo import train as train_module
from diablo.config import TrainConfig
from diablo.data import build_transform
from diablo.data.synthetic import load_further_groups, load_synthetic
from diablo.run_directory import load_optimiser

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> int:
    return train_module.main(argv)


def test_end_to_end_writes_checkpoints_and_metrics(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(flags(folder, out)) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]  # epoch 0: the untrained model
    assert all(np.isfinite(line["loss"]) for line in lines[1:]) and "loss" not in lines[0]
    assert all(0 <= line["recall@1"] <= 1 for line in lines)
    model, cfg, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert cfg.num_entries == 2 and cfg.selection == "dimension"
    assert meta["epoch"] == 2 and meta["step"] == 4 and len(meta["history"]) == 3
    assert meta["train_config"]["dataset"] == "folder" and meta["git_commit"]
    _, _, best = diablo.load_checkpoint(out / "best.safetensors", device="cpu")
    assert best["history"][-1]["recall@1"] == max(line["recall@1"] for line in lines)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(out)


def test_resume_continues_from_last(folder, tmp_path):
    out = tmp_path / "run"
    assert run(flags(folder, out, "--epochs", "1", "--amp")) == 0  # bfloat16 autocast, here on the CPU
    assert run(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["epoch"] == 2 and meta["step"] == 4
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]


def test_resume_restores_the_optimiser(folder, tmp_path):
    out = tmp_path / "run"
    assert run(flags(folder, out, "--epochs", "1")) == 0
    config = TrainConfig(**diablo.load_checkpoint(out / "last.safetensors", device="cpu")[2]["train_config"])
    model = diablo.build_model(config.model_config())
    opt = train_module.optimiser(model, config)
    epoch, step = load_optimiser(out / "train_state.safetensors", opt)
    assert (epoch, step) == (1, 2)
    moments = [s for s in opt.state_dict()["state"].values()]
    assert moments and all(float(s["step"]) == 2 for s in moments)


def test_validation_split_and_per_class_limit(folder, tmp_path):
    """--val-fraction selects on held-out training classes; --max-per-class caps every class."""
    out = tmp_path / "run"
    assert run(flags(folder, out, "--epochs", "1", "--val-fraction", "0.5", "--max-per-class", "4")) == 0
    _, _, meta = diablo.load_checkpoint(out / "best.safetensors", device="cpu")
    assert meta["evaluated_on"] == "validation"
    config = TrainConfig(**meta["train_config"])
    train_set, (queries, gallery) = train_module.training_set(config), train_module.evaluation_sets(config)
    assert gallery is None
    assert not set(train_set.labels) & set(queries.labels)  # disjoint classes
    assert len(set(train_set.labels)) == len(set(queries.labels)) == 2  # the 4 training classes, halved
    assert len(train_set) == len(queries) == 2 * 4


def test_kmeans_dictionary_from_the_training_classes_only(folder, tmp_path, monkeypatch):
    seen = {}

    def initialise(model, images, **kw):
        seen["labels"], seen["train"] = set(images.labels), images.dataset.transform
        return real(model, images, **kw)

    real = dictionary.initialise_dictionary
    monkeypatch.setattr(dictionary, "initialise_dictionary", initialise)
    out = tmp_path / "run"
    argv = flags(folder, out, "--epochs", "1", "--val-fraction", "0.5", "--dictionary-init", "kmeans")
    assert run(argv) == 0
    config, _ = train_module.config_from_args(argv)
    assert seen["labels"] == set(train_module.training_set(config).labels)  # no validation class
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in seen["train"].transforms)  # test transform
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["train_config"]["dictionary_init"] == "kmeans"


@pytest.mark.parametrize("selection, shared", [("dimension", True), ("feature", False)])
def test_shared_dictionary_start(folder, tmp_path, monkeypatch, selection, shared):
    """`shared` gives dimension-wise selection channel-shared entries; feature-wise has no channels to share."""
    calls = []
    monkeypatch.setattr(dictionary, "share_across_channels", calls.append)
    argv = flags(folder, tmp_path / "run", "--epochs", "1", "--selection", selection, "--dictionary-init", "shared")
    assert run(argv) == 0
    assert len(calls) == int(shared)


def test_new_parts_learn_faster(folder):
    config, _ = train_module.config_from_args(["--backbone", "mobilenet_v2", "--pretrained", "none", "--lr", "1e-4",
                                               "--new-lr-factor", "10", "--attention", "post", "--learn-alpha"])
    model = diablo.build_model(config.model_config())
    pretrained, new = train_module.optimiser(model, config).param_groups
    assert (pretrained["lr"], new["lr"]) == (1e-4, pytest.approx(1e-3))
    new_ids = {id(p) for p in new["params"]}
    assert id(model.dictionary) in new_ids and id(model.selection.log_alpha) in new_ids
    assert id(model.embedding.weight) in new_ids and id(next(model.phi.parameters())) not in new_ids
    assert len(pretrained["params"]) + len(new["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("attention", ["post", "none"])
def test_the_dictionary_in_its_own_group(attention):
    config, _ = train_module.config_from_args(["--backbone", "mobilenet_v2", "--pretrained", "none", "--lr", "1e-4",
                                               "--new-lr-factor", "10", "--dictionary-lr-factor", "30",
                                               "--attention", attention])
    model = diablo.build_model(config.model_config())
    groups = train_module.optimiser(model, config).param_groups
    if attention == "none":  # no dictionary: the two groups of before
        assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
        return
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 3e-2])
    assert [id(p) for p in groups[2]["params"]] == [id(model.dictionary)]
    assert id(model.embedding.weight) in {id(p) for p in groups[1]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_validation_on_further_synthetic_groups(tmp_path, monkeypatch):
    """--val-groups: training on the synthetic training classes, every evaluation on classes beyond
    the set's (a small set of further groups here, to keep the test quick), best chosen there."""
    small = {"num_classes": 6, "images_per_class": 3, "resolution": 64, "group_size": 3}
    calls = []

    def further(groups, root=None, transform=None):
        calls.append(groups)
        return load_further_groups(groups, tmp_path / "cache", transform, **small)

    monkeypatch.setattr(train_module, "load_further_groups", further)
    out = tmp_path / "run"
    argv = [*flags(tmp_path, out, "--epochs", "1", "--steps-per-epoch", "1"), "--dataset", "synthetic", "--root",
            str(tmp_path / "synthetic"), "--val-groups", "2"]
    monkeypatch.setattr(train_module, "training_set", lambda config, train=True: load_synthetic(
        tmp_path / "cache", "train", build_transform(train, config.image_size), **small))
    assert run(argv) == 0
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["evaluated_on"] == "validation" and calls and set(calls) == {2}
    assert [row["images"] for row in meta["history"] if "images" in row] == [2 * 3 * 3] * 2  # 2 groups x 3 x 3
    for bad in (["--val-groups", "1", "--val-fraction", "0.5"], ["--val-groups", "1", "--dataset", "folder"]):
        with pytest.raises(SystemExit):
            train_module.config_from_args([*flags(tmp_path, tmp_path / "other"), "--dataset", "synthetic", *bad])


def test_killed_mid_epoch_then_resumed_ends_with_a_valid_checkpoint(folder, tmp_path):
    out = tmp_path / "run"
    argv = flags(folder, out, "--epochs", "3", "--steps-per-epoch", "40")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "diablo.train", *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.time() < deadline \
            and proc.poll() is None:  # epoch 1 committed (epoch 0 is the untrained model)
        time.sleep(0.2)
    time.sleep(0.2)  # inside epoch 2 (40 steps), whose end is far off
    if proc.poll() is not None:
        pytest.fail(f"training ended before it could be killed (rc={proc.returncode})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["epoch"] == 1
    assert run(["--resume", str(out), "--no-progress", "--steps-per-epoch", "2"]) == 0
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["epoch"] == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run(flags(folder, out, "--epochs", "1")) == 0
    before = (out / "last.safetensors").read_bytes()

    class NaNLoss:
        def __call__(self, z, labels):
            return z.sum() * float("nan")

    monkeypatch.setattr(train_module, "build_loss", lambda name: NaNLoss())
    assert run(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 1
    assert "loss is nan" in capsys.readouterr().err
    assert (out / "last.safetensors").read_bytes() == before


def test_preset_and_flags():
    config, resume = train_module.config_from_args(["--preset", "cub", "--epochs", "3", "--amp"])
    assert not resume
    assert (config.dataset, config.backbone, config.lr, config.image_size) == ("cub", "googlenet", 1e-5, 256)
    assert (config.classes_per_batch, config.images_per_class, config.epochs, config.amp) == (8, 10, 3, True)
    config, _ = train_module.config_from_args(["--entries", "4", "--embedding-dim", "64"])
    assert config.model_config().num_entries == 4


@pytest.mark.parametrize("argv", [["--entries", "3"], ["--loss", "hinge"], ["--backbone", "vgg"],
                                  ["--lr", "-1"], ["--epochs", "x"],
                                  ["--dictionary-init", "zeros"], ["--unknown-flag"], ["--resume", "/nope"],
                                  ["--classes-per-batch", "1"], ["--image-size", "7"], ["--alpha", "inf"],
                                  ["--alpha", "nan"], ["--device", "bogus"], ["--device", "cuda:99"],
                                  ["--schedule", "linear"], ["--warmup-steps", "-1"], ["--min-lr-factor", "2"],
                                  ["--pretrained", "/no/such/weights.pth"], ["--resume", "/nope", "--overwrite"]])
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_module.config_from_args(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("python -m diablo.train: error:") and len(lines[-1]) < 400


def test_weights_that_are_not_a_state_dict_fail_in_one_line(folder, tmp_path, capsys):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert run(flags(folder, tmp_path / "run", "--pretrained", str(text))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "passwd" in err[0]


def test_missing_dataset_says_what_is_missing(tmp_path, capsys):
    argv = ["--dataset", "cub", "--root", str(tmp_path / "CUB_200_2011"), "--pretrained", "none",
            "--backbone", "mobilenet_v2", "--no-progress", "--out", str(tmp_path / "run")]
    assert run(argv) == 2
    assert "CUB_200_2011" in capsys.readouterr().err


def test_torchrun_two_gloo_processes(folder, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diablo.train", *flags(folder, out, "--device", "cpu")]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    _, _, meta = diablo.load_checkpoint(out / "last.safetensors", device="cpu")
    assert meta["epoch"] == 2 and meta["step"] == 4
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("attention, selection", [("pre", "dimension"), ("post", "feature"), ("none", "feature")])
def test_channels_last_is_the_same_computation(attention, selection):
    """NHWC is a memory layout, not another computation: in float64 the loss and every gradient equal
    NCHW's (in float32 they differ by rounding, which Adam's first, sign-like steps amplify)."""
    torch.manual_seed(0)
    config = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
                                num_entries=2, embedding_dim=16)
    nchw = diablo.build_model(config).double().train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 1])
    loss = diablo.build_loss("binomial")
    expected, got = loss(nchw(x), y), loss(nhwc(x.contiguous(memory_format=torch.channels_last)), y)
    expected.backward()
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_channels_last_reaches_the_model(folder):
    config, _ = train_module.config_from_args(flags(folder, Path("unused")))
    job = train_module.Job(torch.device("cpu"))
    model, _, _ = train_module.restore(config, None, False, job)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
