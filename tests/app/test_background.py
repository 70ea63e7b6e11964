"""Gallery passes in the background (app/lab/passes.py) on a user's own checkpoint, trained and saved
here, and a user's own image folder: pages draw at once, show progress and partial results ("n of N
embedded"), and the whole-gallery results once the pass is done; the results are cached on disk."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from lab_testing import assert_ok, settle, texts

from app.lab import passes
from app.lab.store import store


def _train_and_save(path: Path) -> None:
    """A few steps of training of a small pre-attention model, saved as a user's checkpoint."""
    import torch

    import diablo

    torch.manual_seed(3)
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="pre", selection="feature",
                             num_entries=4, embedding_dim=64)
    model = diablo.build_model(cfg).train()
    loss_fn = diablo.build_loss("binomial")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        loss = loss_fn(model(torch.randn(8, 3, 64, 64)), torch.arange(8) % 2)
        loss.backward()
        opt.step()
    meta = {"train_config": {"dataset": "folder", "image_size": 64, "epochs": 1}}
    diablo.save_checkpoint(path, model.eval(), cfg, meta=meta)


@pytest.fixture
def gated(monkeypatch):
    """Embedding passes of 8 images a step that stop after the second step until the gate opens."""
    import diablo.gallery_service as service

    gate = threading.Event()
    real = service.embedding_pass

    def slow(*args, **kwargs):
        for step, value in enumerate(real(*args, **kwargs)):
            if step >= 2:
                gate.wait(120)
            yield value

    monkeypatch.setattr(passes, "CHUNK", 8)
    monkeypatch.setattr(service, "embedding_pass", slow)
    try:
        yield gate
    finally:
        gate.set()
        store().wait_idle(240)


def _embedding_job(label: str):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [j for j in store().pending() if j.label.startswith("Embedding") and j.done >= 16]
        if running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no embedding pass reached 16 images ({label})")


def test_own_checkpoint_and_folder_partial_then_complete(app, folder, tmp_path, gated):
    checkpoint = tmp_path / "mine.safetensors"
    _train_and_save(checkpoint)
    app.run()
    app.text_input(key="checkpoint_path").set_value(str(checkpoint)).run()
    app.radio(key="gallery_kind").set_value("Image folder").run()
    app.text_input(key="gallery_folder").set_value(str(folder)).run()
    assert_ok(app)
    assert any(c.startswith("48 images, 8 classes (folder/all)") for c in texts(app.sidebar.caption))

    # Attention draws the image's own overlays at once; the gallery statistics are a progress bar
    assert any(c.startswith("entry 0:") for image in app.image for c in image.captions)
    assert app.get("progress") and not app.get("plotly_chart")

    app.switch_page("views/retrieval.py").run()
    job = _embedding_job("retrieval")
    app.run()
    assert_ok(app)
    (heading,) = [h for h in texts(app.subheader) if h.startswith("Top ")]
    match = re.fullmatch(r"Top 8 results \(partial: (\d+) of 48 embedded\)", heading)
    assert match and 16 <= int(match.group(1)) < 48, heading
    shown = int(match.group(1))
    ids = [int(re.search(r"#(\d+) ·", c).group(1)) for i in app.image for c in i.captions if re.match(r"[✓✗] \d+\.", c)]
    assert len(ids) == 8 and max(ids) < shown  # searched over what is embedded so far
    assert any("computed once the whole gallery is embedded" in i for i in texts(app.info))
    assert not job.finished

    gated.set()
    settle(app)
    assert_ok(app)
    assert "Top 8 results" in texts(app.subheader)
    assert "Recall@1" in app.dataframe[-1].value.columns
    assert job.ok and len(job.result.index) == 48

    # the results are on disk: a new process (here: a cleared store) finds them without a pass
    store().clear()
    again = passes.gallery_job(_model(checkpoint), _gallery(folder))
    assert again.ok and again is not job and len(again.result.index) == 48


def _model(path: Path):
    from app.lab.models import checkpoint_ref, load_model

    return load_model(checkpoint_ref(path))


def _gallery(folder: Path):
    from app.lab.galleries import GallerySpec, load_gallery
    from app.lab.sidebar import DEFAULT_LIMIT

    return load_gallery(GallerySpec("folder", "all", str(folder), (), DEFAULT_LIMIT), 64)
