"""Driving the lab in a real browser: a `streamlit run app/main.py` server in a subprocess and
Debian's Chromium under Playwright. Used by tests/app/test_browser.py and benchmarks/app_latency.py.

Chromium comes from Debian (`make system` installs it): Playwright's own browser download is never
used, the launch names /usr/bin/chromium (or `chromium` on PATH, or $DIABLO_CHROMIUM).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "app" / "main.py"
PAGES = ("Attention", "Compare", "Embeddings", "Retrieval", "Attribution", "Training")  # the navigation's order
# Flags that keep Chromium off the network (it is closed here: without them Chromium keeps trying).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1000}
MISSING_CHROMIUM = (
    "Chromium was not found ({where}). The browser test needs Debian's chromium: run `make system` "
    "(apt-get install chromium), or set DIABLO_CHROMIUM to a Chromium binary."
)


def chromium_path() -> str | None:
    """$DIABLO_CHROMIUM if set (only it), else `chromium` on PATH, else /usr/bin/chromium; None if not there."""
    chosen = os.environ.get("DIABLO_CHROMIUM")
    for candidate in [chosen] if chosen else [shutil.which("chromium"), "/usr/bin/chromium"]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_chromium_message() -> str:
    where = f"DIABLO_CHROMIUM={os.environ['DIABLO_CHROMIUM']!r}" if os.environ.get("DIABLO_CHROMIUM") else (
        "no `chromium` on PATH nor /usr/bin/chromium")
    return MISSING_CHROMIUM.format(where=where)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabServer:
    """`streamlit run app/main.py` on 127.0.0.1:<port> in its own process group; output to `log`."""

    def __init__(self, env: Mapping[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        self.command = [
            sys.executable, "-m", "streamlit", "run", str(MAIN),
            "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(self.port),
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        ]  # fmt: skip
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> LabServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self._out = out
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from start() until /_stcore/health answers ok; RuntimeError if the server dies or is late."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the Streamlit server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the Streamlit server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s; safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        out = getattr(self, "_out", None)
        if out is not None:
            out.close()
            self._out = None

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_chromium(playwright: Any, executable: str, user_data_dir: str | None = None) -> Any:
    """A persistent Chromium context (a fresh, empty profile unless `user_data_dir`) with the lab's viewport."""
    profile = user_data_dir or tempfile.mkdtemp(prefix="diablo-chromium-")
    return playwright.chromium.launch_persistent_context(
        profile, executable_path=executable, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT,
    )


# ---- waiting on Streamlit -------------------------------------------------------------------------

IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def wait_idle(page: Any, timeout_s: float = 120.0) -> None:
    """Until the page's script run has finished (Streamlit's stApp says notRunning) and nothing is stale."""
    page.locator(IDLE).wait_for(state="attached", timeout=timeout_s * 1000)
    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=timeout_s * 1000)


def heading(page: Any, title: str) -> Any:
    """The page's st.header (an h2 in the main area) with exactly `title`."""
    return page.locator('[data-testid="stMain"] h2').filter(has_text=title).first


def nav_link(page: Any, title: str) -> Any:
    return page.locator('[data-testid="stSidebarNavLink"]').filter(has_text=title).first


def open_page(page: Any, title: str, timeout_s: float = 120.0) -> None:
    """Click `title` in the sidebar navigation; return once its header shows and its run has finished."""
    nav_link(page, title).click()
    heading(page, title).wait_for(state="visible", timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def main_height(page: Any) -> int:
    """The height of the page's content: the main area's or the sidebar's, whichever is taller."""
    return int(page.evaluate(
        "() => Math.max(document.documentElement.scrollHeight, ...['stMain', 'stSidebarContent'].map("
        "id => { const e = document.querySelector(`[data-testid=\"${id}\"]`); return e ? e.scrollHeight : 0; }))"
    ))  # fmt: skip


def screenshot(page: Any, path: Path, max_height: int = 6000) -> Path:
    """A PNG of the whole page: Streamlit scrolls inside its main area, so the viewport is stretched to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or VIEWPORT
    height = min(max(main_height(page), size["height"]), max_height)
    page.set_viewport_size({"width": size["width"], "height": height})
    try:
        page.wait_for_timeout(400)  # plotly and the data grid redraw at the new size
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path
