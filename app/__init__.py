"""The DIABLO attention lab (Streamlit): `streamlit run app/main.py`."""


def _prefer_navigation() -> None:
    """Tell Streamlit that app/pages/ holds st.navigation pages, not a v1 "pages/" folder.

    Streamlit treats a `pages/` folder beside the main script as a v1 multipage app until the
    main script has called st.navigation once, so on a fresh server a deep link (e.g.
    /retrieval) would run the page alone under a generated menu. Every page imports this
    package, so after the first page run the app's own navigation (app/main.py) takes over.
    The pages also work on their own, so nothing breaks if a Streamlit version moves this flag.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except (ImportError, AttributeError):  # pragma: no cover - another Streamlit layout
        pass


_prefer_navigation()
