"""app/main.py: st.navigation routes the views, the sidebar is drawn once (by the entrypoint) and keeps
its choices across pages, and nothing reaches into Streamlit's internals or sys.path."""

from __future__ import annotations

import re

import pytest
from conftest import REPO
from lab_testing import assert_ok, texts

VIEWS = ("attention", "compare", "embeddings", "retrieval", "attribution", "training")


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_gets_the_one_sidebar(app, view):
    app.run()
    app.switch_page(f"views/{view}.py").run()
    assert_ok(app)
    assert view.capitalize() in texts(app.header)
    assert [s.key for s in app.sidebar.selectbox].count("checkpoint") == 1
    assert [r.key for r in app.sidebar.radio].count("gallery_kind") == 1
    assert sum("Device: **" in c for c in texts(app.sidebar.caption)) == 1


def test_sidebar_choices_survive_page_switches(app, lab_env):
    app.run()
    app.selectbox(key="checkpoint").set_value("demo-post-feature.safetensors").run()
    app.number_input(key="synthetic_classes").set_value(8).run()
    app.switch_page("views/training.py").run()
    assert_ok(app)
    assert app.selectbox(key="checkpoint").value == "demo-post-feature.safetensors"
    assert app.number_input(key="synthetic_classes").value == 8
    assert app.multiselect(key="training_checkpoints").value == ["demo-post-feature.safetensors"]
    app.switch_page("views/retrieval.py").run()
    assert_ok(app)
    assert any(c.startswith("16 images, 4 classes") for c in texts(app.sidebar.caption))  # 8 classes: 4 test ones
    app.switch_page("views/attention.py").run()
    assert app.selectbox(key="checkpoint").value == "demo-post-feature.safetensors"
    assert not app.warning  # no "default value set via the Session State API" notice


def test_a_view_without_the_entrypoint_says_how_to_start_the_lab(lab_env):
    from streamlit.testing.v1 import AppTest

    view = AppTest.from_file(str(REPO / "app" / "views" / "training.py"), default_timeout=240)
    view.run()
    assert_ok(view)
    assert any("streamlit run app/main.py" in e for e in texts(view.error))


def test_no_streamlit_internals_nor_path_edits_in_the_views():
    app_dir = REPO / "app"
    assert not (app_dir / "pages").exists()  # Streamlit's v1 multipage folder name
    sources = {p: p.read_text() for p in app_dir.rglob("*.py")}
    assert not [p for p, text in sources.items() if "PagesManager" in text or "streamlit.runtime" in text]
    assert [p.name for p, text in sources.items() if re.search(r"\bsys\.path\b", text)] == ["main.py"]
    for path in (app_dir / "lab").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 350, path
