"""diablo.ablate: the paper's Tables 3 and 4 as one command, on the tiny folder dataset (1 step per run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from training_run import flags

import diablo
from diablo import ablate
from diablo import train as training
from diablo.checkpoint import read_metadata
from diablo.config import PRESETS, TrainConfig


def tiny(folder: Path, out: Path, *extra: str) -> list[str]:
    """The tiny training flags; `flags` also gives --attention, --selection and --entries 2, which
    the grid takes as its own (the later --attention / --selection win)."""
    return [*flags(folder, out, "--epochs", "1", "--steps-per-epoch", "1"), *extra]


def table_row(markdown: str, cell: str) -> list[str]:
    """The cells of the Markdown table's row for `cell`."""
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {cell} |")]
    assert len(rows) == 1, markdown
    return [part.strip() for part in rows[0].strip("|").split("|")]


def run_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/**/*") if p.is_file()}


def test_two_variants_two_seeds_table_rerun_and_mismatch(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    argv = tiny(folder, out, "--attention", "pre", "none", "--selection", "dimension", "--seeds", "0", "1")
    assert ablate.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    markdown = (out / "ablation.md").read_text()
    assert markdown.strip() in printed
    assert [c["name"] for c in result["cells"]] == ["baseline", "pre-dimension-N2"]
    assert result["selected"] == "final epoch"
    for cell in result["cells"]:
        recorded = []
        for seed in (0, 1):
            _, meta = read_metadata(out / cell["name"] / f"seed-{seed}" / "last.safetensors")
            assert meta["train_config"]["seed"] == seed and meta["train_config"]["attention"] == (
                "none" if cell["name"] == "baseline" else "pre")
            assert meta["epoch"] == 1
            recorded.append(meta["history"][-1])
        assert cell["runs"] == 2
        row = table_row(markdown, cell["name"])
        assert row[5] == "2"
        for metric, column in (("recall@1", 6), ("map@r", 7)):
            values = np.array([r[metric] for r in recorded])
            assert cell["summary"][metric]["mean"] == pytest.approx(values.mean())
            assert cell["summary"][metric]["std"] == pytest.approx(values.std())
            assert row[column] == f"{100 * values.mean():.2f} ± {100 * values.std():.2f}"
        runs = [r for r in result["runs"] if r["cell"] == cell["name"]]
        assert [r["recall@1"] for r in runs] == [r["recall@1"] for r in recorded]
    assert "paper" not in markdown  # not the paper's settings: no paper column
    assert (out / "ablation.html").stat().st_size > 0
    assert (out / "ablation.png").exists() == (importlib.util.find_spec("kaleido") is not None)

    # The second invocation trains nothing and writes nothing in the run folders.
    before = run_files(out)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained a finished run again"))
    assert ablate.main(argv) == 0
    assert run_files(out) == before
    assert json.loads((out / "ablation.json").read_text())["runs"] == result["runs"]
    # The baseline has no dictionary: its runs serve a grid whose dictionary settings differ.
    assert ablate.main([*argv, "--attention", "none", "--selection", "feature", "--alpha", "5"]) == 0
    assert run_files(out) == before

    # Other settings in the same folders: refused before anything runs.
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        ablate.main([*argv, "--lr", "1e-3"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "lr" in err[0]


def test_protocol_splits_select_on_validation_and_resume(folder, tmp_path, monkeypatch):
    out = tmp_path / "protocol"
    argv = tiny(folder, out, "--attention", "post", "--selection", "feature", "--protocol-splits", "2")
    assert ablate.main(argv) == 0
    calls = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda config, **kw: calls.append(kw) or real_train(config, **kw))
    assert ablate.main([*argv, "--epochs", "2"]) == 0  # one more epoch: each split is resumed
    assert calls == [{"resume": True}] * 2
    result = json.loads((out / "ablation.json").read_text())
    assert result["selected"] == "best validation epoch" and result["val_fraction"] == 0.5
    runs = result["runs"]
    assert [(r["cell"], r["seed"]) for r in runs] == [("post-feature-N2", 0), ("post-feature-N2", 1)]
    held = []
    for row in runs:
        run = out / "post-feature-N2" / f"seed-{row['seed']}"
        assert read_metadata(run / "last.safetensors")[1]["epoch"] == 2
        model, _, meta = diablo.load_checkpoint(run / "best.safetensors", device="cpu")
        assert meta["evaluated_on"] == "validation" and row["epoch"] == meta["epoch"]
        config = TrainConfig(**meta["train_config"])
        held.append(set(training.evaluation_sets(config)[0].labels))
        test = training.evaluation_sets(config.replace(val_fraction=0.0))[0]
        expected = training.measure(model, test, None, config, "cpu")
        assert {k: row[k] for k in expected} == pytest.approx(expected)
    assert held[0] != held[1]  # each seed its own train / validation split
    summary = result["cells"][0]["summary"]["recall@1"]
    assert summary["mean"] == pytest.approx(np.mean([r["recall@1"] for r in runs]))
    assert summary["std"] == pytest.approx(np.std([r["recall@1"] for r in runs]))


def fake_result(base: TrainConfig, entries: list[int]) -> dict:
    """A result of `ablate` for the full grid on `base`, with made-up metrics (no training)."""
    cells = ablate.grid(base, ["pre", "post", "none"], ["feature", "dimension"], entries)
    summary = {"recall@1": {"mean": 0.5, "std": 0.01}, "map@r": {"mean": 0.25, "std": 0.02}}
    return {"cells": [{"name": c.name, "train_config": c.config.to_dict(), "runs": 3, "summary": summary}
                      for c in cells], "seeds": [0, 1, 2], "val_fraction": 0.0, "selected": "final epoch",
            "failed": [], "train_config": base.to_dict()}


def test_per_variant_dictionary_starts():
    base = TrainConfig(**PRESETS["demo"])
    cells = ablate.grid(base, ["pre", "post", "none"], ["feature", "dimension"],
                        inits=["post-feature=kmeans", "pre-dimension=shared", "random"])
    starts = {c.name: (c.config.attention, c.config.selection, c.config.dictionary_init) for c in cells}
    assert starts == {
        "baseline": ("none", base.selection, "random"),  # no dictionary: the selection is unused
        "pre-feature": ("pre", "feature", "random"),
        "post-feature-init-kmeans": ("post", "feature", "kmeans"),
        "pre-dimension-init-shared": ("pre", "dimension", "shared"),
        "post-dimension": ("post", "dimension", "random"),
    }
    # A variant may have several own starts; the crossed ones then do not apply to it.
    cells = ablate.grid(base, ["post"], ["feature"], inits=["post-feature=kmeans", "post-feature=random", "shared"])
    assert [c.config.dictionary_init for c in cells] == ["kmeans", "random"]


def test_validation_on_further_groups_is_named():
    base = TrainConfig(**{**PRESETS["demo"], "val_groups": 2})
    result = {**fake_result(base, [8]), "selected": "best validation epoch"}
    notes = ablate.markdown_table(result)
    assert "2 further synthetic groups" in notes and "best validation R@1" in notes
    assert ablate.run_config(ablate.grid(base, ["pre"], ["feature"])[0], 1, 0.0, Path("x")).validates


def test_cub_preset_prints_the_papers_table_3_and_4_cells():
    markdown = ablate.markdown_table(fake_result(TrainConfig(**PRESETS["cub"]), [8, 16, 4]))
    assert "| paper R@1 (%) |" in markdown.splitlines()[0]
    expected = {  # typed in from the paper: Table 3 (N = 8) and Table 4 (feature-wise post-attention)
        "baseline": "52.9 ± 0.2 (Table 3)",
        "pre-feature": "52.3 ± 0.4 (Table 3)",
        "post-feature": "54.0 ± 0.4 (Table 3, Table 4)",
        "pre-dimension": "58.3 ± 0.2 (Table 3)",
        "post-dimension": "57.8 ± 0.1 (Table 3)",
        "post-feature-N16": "48.0 ± 0.4 (Table 4)",
        "post-feature-N4": "53.3 ± 0.3 (Table 4)",
        "pre-dimension-N16": "-",  # Table 4's dimension-wise row has no numbers in the paper's text
        "pre-feature-N4": "-",
        "post-dimension-N16": "-",
    }
    for cell, paper in expected.items():
        row = table_row(markdown, cell)
        assert row[-1] == paper and row[6] == "50.00 ± 1.00" and row[7] == "25.00 ± 2.00"
    assert len(table_row(markdown, "baseline")) == 9
    # Other data, backbone or loss: the paper has no such cell, and no paper column is printed.
    for changes in ({"dataset": "cars"}, {"backbone": "mobilenet_v2"}, {"loss": "triplet"}):
        other = ablate.markdown_table(fake_result(TrainConfig(**{**PRESETS["cub"], **changes}), [8]))
        assert "paper" not in other and "Table" not in other
    # cub-val (validation) has the same cells.
    assert "58.3 ± 0.2 (Table 3)" in ablate.markdown_table(fake_result(TrainConfig(**PRESETS["cub-val"]), [8]))


@pytest.mark.parametrize("argv", [
    ["--attention", "sideways"], ["--seeds"], ["--seeds", "0", "--protocol-splits", "2"], ["--protocol-splits", "0"],
    ["--protocol-splits", "2", "--split-fraction", "1"], ["--split-fraction", "0.5"], ["--entries", "3"],
    ["--resume", "x"], ["--overwrite"], ["--seed", "1"], ["--protocol-splits", "2", "--val-fraction", "0.3"],
    ["--epochs", "-1"], ["--bogus"], ["--alpha", "0"], ["--dictionary-init", "sideways-feature=kmeans"],
    ["--dictionary-init", "post-feature=bogus"], ["--dictionary-init", "bogus"],
])
def test_bad_input_one_line_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        ablate.main([*argv, "--no-progress", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m diablo.ablate: error: "), err
    assert not (tmp_path / "out").exists()


def test_command_line_exit_2():
    done = subprocess.run([sys.executable, "-m", "diablo.ablate", "--attention", "sideways"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
