"""The DIABLO attention lab: `streamlit run app/main.py`.

Routes the pages with st.navigation. Pages live in app/pages/ and only call app.lab and the
diablo API; each page starts with `lab.context()`, which draws the sidebar (checkpoint, gallery,
device). The sidebar is drawn by the page rather than here because Streamlit's AppTest reruns a
page script without this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="DIABLO attention lab", page_icon=":material/center_focus_strong:", layout="wide")

PAGES = [
    st.Page("pages/attention.py", title="Attention", icon=":material/visibility:", default=True),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/retrieval.py", title="Retrieval", icon=":material/image_search:"),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/highlight:"),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
]

st.navigation(PAGES).run()
