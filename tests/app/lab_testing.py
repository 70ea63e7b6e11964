"""Helpers of the app tests (kept out of conftest.py so that test modules can import them by name)."""

from __future__ import annotations


def open_page(app, page: str):
    """Run the app once, switch to app/views/<page>.py and run it; returns the AppTest."""
    app.run()
    app.switch_page(f"views/{page}.py")
    app.run()
    return app


def assert_ok(app) -> None:
    """No uncaught exception in the last run."""
    assert not app.exception, [e.message for e in app.exception]


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def png(size: tuple[int, int] = (48, 48), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """Image file bytes of a small gradient in the given PIL mode and format."""
    import io

    import numpy as np
    from PIL import Image

    w, h = size
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * 255 // max(1, w + h - 2)).astype(np.uint8)
    rgb = np.stack([ramp, ramp[::-1], 255 - ramp], axis=-1)
    image = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        image = Image.fromarray(ramp.astype(np.uint16) * 257)  # mode I;16
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def figures(app) -> list:
    """The plotly figures of the last run, as plotly Figures (from each chart's JSON spec)."""
    import plotly.io

    return [plotly.io.from_json(chart.proto.spec) for chart in app.get("plotly_chart")]


def figure_titles(app) -> list[str]:
    return [fig.layout.title.text or "" for fig in figures(app)]


def settle(app, timeout: float = 240.0):
    """Wait for the lab's background passes (embeddings, entry statistics) to finish, then run the
    page again (what its polling fragment does in a browser); returns the AppTest."""
    from app.lab.store import store

    assert store().wait_idle(timeout), [job.label for job in store().pending()]
    app.run()
    return app
