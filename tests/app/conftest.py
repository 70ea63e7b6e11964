"""AppTest fixtures: stand-in demo checkpoints (64 px) and a tiny synthetic gallery, all in tmp.

The app reads DIABLO_CHECKPOINTS (checkpoint folder), DIABLO_CACHE (cache root: the synthetic
set and the lab's embeddings) and DIABLO_SYNTHETIC (the gallery's size), so the tests never touch
the repository's checkpoints/ or ~/.cache. Set DIABLO_TEST_CHECKPOINTS to a folder holding
demo-*.safetensors to run the same tests on real checkpoints instead of the stand-ins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `import app` however pytest was started
    sys.path.insert(0, str(REPO))

MAIN = str(REPO / "app" / "main.py")
TIMEOUT = 240  # seconds for one AppTest run (the first run builds the gallery and loads models)
VARIANTS = {  # the demo names: (attention, selection)
    "demo-baseline": ("none", "feature"),
    "demo-pre-dimension": ("pre", "dimension"),
    "demo-post-feature": ("post", "feature"),
}
GALLERY = '{"num_classes": 6, "images_per_class": 4, "resolution": 64}'  # test split: 3 classes x 4 images


def _stand_ins(folder: Path) -> None:
    import torch

    import diablo
    from diablo.config import TrainConfig

    for i, (name, (attention, selection)) in enumerate(VARIANTS.items()):
        torch.manual_seed(i)
        cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention=attention,
                                 selection=selection, num_entries=4, embedding_dim=64)
        train = TrainConfig(dataset="synthetic", backbone="mobilenet_v2", pretrained="none", attention=attention,
                            selection=selection, num_entries=4, embedding_dim=64, image_size=64, epochs=3)
        history = [
            {"epoch": e, "loss": 1.5 / e, "recall@1": 0.2 * e, "recall@2": 0.25 * e, "recall@4": 0.3 * e,
             "recall@8": 0.32 * e, "map@r": 0.1 * e}
            for e in (1, 2, 3)
        ]
        meta = {"train_config": train.to_dict(), "history": history,
                "test_metrics": {k: v for k, v in history[-1].items() if "@" in k}}
        diablo.save_checkpoint(folder / f"{name}.safetensors", diablo.build_model(cfg), cfg, meta=meta)
    # a checkpoint without a history, for the Training page
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="post", selection="feature",
                             num_entries=4, embedding_dim=64)
    diablo.save_checkpoint(folder / "no-history.safetensors", diablo.build_model(cfg), cfg,
                           meta={"train_config": {"dataset": "synthetic", "image_size": 64}})


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Environment of the app under test; set for the whole session (the app reads it on every run)."""
    root = tmp_path_factory.mktemp("lab")
    real = os.environ.get("DIABLO_TEST_CHECKPOINTS")
    checkpoints = Path(real) if real else root / "checkpoints"
    if not real:
        checkpoints.mkdir()
        _stand_ins(checkpoints)
    broken = root / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    empty = root / "empty-folder"
    (empty / "class-a").mkdir(parents=True)
    (empty / "class-a" / "notes.txt").write_text("no images here")
    saved = {k: os.environ.get(k) for k in ("DIABLO_CHECKPOINTS", "DIABLO_CACHE", "DIABLO_SYNTHETIC")}
    os.environ["DIABLO_CHECKPOINTS"] = str(checkpoints)
    os.environ["DIABLO_CACHE"] = str(root / "cache")
    os.environ["DIABLO_SYNTHETIC"] = GALLERY
    yield {"checkpoints": checkpoints, "broken": broken, "empty": empty, "root": root}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def app(lab_env: dict[str, Path]):
    """A fresh AppTest of app/main.py (the Attention page), not yet run."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(MAIN, default_timeout=TIMEOUT)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the browser tests; fails (not skips) without it: `make test` installs it."""
    from lab_browser import chromium_path, missing_chromium_message

    path = chromium_path()
    if path is None:
        pytest.fail(missing_chromium_message(), pytrace=False)
    return path
