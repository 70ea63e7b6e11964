"""The DIABLO attention lab: `streamlit run app/main.py`.

The entrypoint of every run: it sets the page config, draws the shared sidebar (checkpoint,
gallery, device; app/lab/sidebar.py) and runs the page chosen in the navigation. Widgets
created here, before `pg.run()`, keep their state across pages. The pages live in app/views/
and read what the sidebar selected with `sidebar.context()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.lab import sidebar  # noqa: E402

st.set_page_config(page_title="DIABLO attention lab", page_icon=":material/center_focus_strong:", layout="wide")

PAGES = [
    st.Page("views/attention.py", title="Attention", icon=":material/visibility:", default=True),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("views/retrieval.py", title="Retrieval", icon=":material/image_search:"),
    st.Page("views/attribution.py", title="Attribution", icon=":material/highlight:"),
    st.Page("views/training.py", title="Training", icon=":material/monitoring:"),
]

page = st.navigation(PAGES)
sidebar.draw()
page.run()
