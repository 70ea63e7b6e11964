"""Pages beside background passes (store.py): progress bars that refresh by themselves, and a
failed pass's error with a retry. Polling is `st.fragment(run_every=POLL_S)`: only the bar reruns,
and once the pass is finished the whole page reruns once to draw what it waited for."""

from __future__ import annotations

import streamlit as st

from app.lab.store import Job, store

POLL_S = 1.5  # seconds between two looks at a running pass


def show_progress(job: Job, text: str | None = None) -> None:
    """A progress bar of the job (static: it moves when the page or its fragment reruns)."""
    text = text or job.label
    count = f"{job.done} of {job.total}" if job.total else "starting"
    st.progress(job.fraction, text=f"{text}: {count} (in the background; once, then cached on disk)")


def follow(job: Job, text: str | None = None) -> None:
    """While `job` runs: its progress bar, refreshed every POLL_S; the page reruns when it finishes."""

    @st.fragment(run_every=POLL_S)
    def _poll() -> None:
        if job.finished:
            st.rerun(scope="app")
        show_progress(job, text)

    if job.finished:
        return
    _poll()


def _retry(job: Job) -> None:
    store().forget(job.key)


def failed(job: Job, what: str, key: str) -> bool:
    """When the job failed: an error that names `what` failed and a Retry button; True if it failed."""
    if job.error is None:
        return False
    st.error(f"{what}: {job.error}", icon=":material/error:")
    st.button("Retry", key=key, on_click=_retry, args=(job,))
    return True
