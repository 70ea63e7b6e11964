"""Four browser sessions on one lab server at once: retrievals and checkpoint switches for about a
minute, with no exception on any page and every result equal to what one session alone gets.

One Chromium (Debian's, as in test_browser.py) holds four tabs, each its own Streamlit session,
all opened at once on a deep link to the Retrieval page of a fresh server (so their first runs
load the model and embed the gallery concurrently). Then one tab alone records the top K of every
(checkpoint, query) pair used. Then all four act in rounds for $DIABLO_CONCURRENCY_S seconds
(default 60): every tab switches its checkpoint (all at once), then its query (all at once), and
every page is checked against the record. Each tab follows its own order, so the sessions ask for
different checkpoints at the same time. Two tabs query gallery items; two upload their query, each
time as a new file (same pixels, another PNG text chunk and name), so the shared networks embed
uploads while the other sessions run.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lab_browser import LabServer, heading, launch_chromium, wait_idle
from lab_testing import png
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.timeout(600)

SESSIONS = 4
UPLOADERS = 2  # the last sessions upload their queries, the others pick gallery items
SECONDS = float(os.environ.get("DIABLO_CONCURRENCY_S", "60"))
CHECKPOINTS = {"demo-pre-dimension": "pre-dimension", "demo-post-feature": "post-feature",
               "demo-baseline": "baseline"}  # picker name: the variant the sidebar's model card shows
GALLERY_QUERIES = (0, 5, 9)
UPLOADS = {"query-a": png((80, 64)), "query-b": png((64, 64), "L")}
FIRST_RENDER_S = 240  # four first runs at once: torch import, model load, gallery embedding
STEP_S = 120  # one wait for a tab: four scripts share the cores
RESULT = re.compile(r"^([✓✗] )?\d+\. #\d+ · ")

READY = """([variant, query]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  const headings = [...document.querySelectorAll('[data-testid="stMain"] h3')].map(e => e.textContent);
  if (headings.some(h => h.includes('(partial'))) return false;  // the gallery still being embedded
  const card = [...document.querySelectorAll('[data-testid="stSidebar"] strong')].map(e => e.textContent.trim());
  const shown = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImageCaption"]')]
    .map(e => e.textContent.trim());
  return card.includes(variant) && (query === null || shown.some(c => c.startsWith('Query: ') && c.includes(query)));
}"""
STATE = """() => ({
  script: document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state'),
  stale: document.querySelectorAll('[data-stale="true"]').length,
  card: [...document.querySelectorAll('[data-testid="stSidebar"] strong')].map(e => e.textContent.trim()),
  captions: [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImageCaption"]')]
    .map(e => e.textContent.trim()).filter(c => c.startsWith('Query')),
  alerts: [...document.querySelectorAll('[data-testid="stAlert"], [data-testid="stException"]')]
    .map(e => e.textContent.trim()),
})"""


@dataclass
class Session:
    """One tab, what it shows now, and what it did."""

    tab: Any
    name: str
    checkpoint: str = "demo-pre-dimension"
    query: int | str | None = 0  # a gallery id or an upload's name (the reference's key); None: no query yet
    shows: str | None = "(#0, "  # what the query's caption holds once the query is shown
    errors: list[str] = field(default_factory=list)
    retrievals: int = 0
    switches: int = 0


class Uploads:
    """Upload files: each `fresh` one a new file of a query's pixels (another PNG text chunk and name)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def fresh(self, query: str) -> Path:
        self.count += 1
        info = PngImagePlugin.PngInfo()
        info.add_text("upload", str(self.count))
        buffer = io.BytesIO()
        Image.open(io.BytesIO(UPLOADS[query])).save(buffer, format="PNG", pnginfo=info)
        path = self.folder / f"{query}-{self.count}.png"
        path.write_bytes(buffer.getvalue())
        return path


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, lab_env: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("concurrency")
    env = {"DIABLO_CHECKPOINTS": str(lab_env["checkpoints"]), "DIABLO_CACHE": str(root / "cache"),
           "DIABLO_SYNTHETIC": os.environ["DIABLO_SYNTHETIC"]}
    lab = LabServer(env, log=root / "streamlit.log")
    request.addfinalizer(lab.stop)
    lab.start()
    lab.wait_ready(timeout=120)
    return lab


def main(tab: Any) -> Any:
    return tab.locator('[data-testid="stMain"]')


def open_retrieval(tabs: list[Any], url: str) -> None:
    """Deep links to the Retrieval page, all at once; returns when every tab has drawn it."""
    for tab in tabs:
        tab.goto(f"{url}/retrieval", wait_until="commit")
    for tab in tabs:
        heading(tab, "Retrieval").wait_for(state="visible", timeout=FIRST_RENDER_S * 1000)


def choose_checkpoint(session: Session, name: str) -> None:
    """Pick a checkpoint in the sidebar (does not wait for the run)."""
    session.tab.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Checkpoint").click()
    session.tab.get_by_role("option", name=name, exact=True).click()
    session.checkpoint = name


def choose_query(session: Session, query: int | str, uploads: Uploads) -> None:
    """Type a gallery id into the query number, or upload a new file of a query's pixels (no wait)."""
    if isinstance(query, str):
        path = uploads.fresh(query)
        main(session.tab).locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))
        session.query, session.shows = query, f"Query: {path.name} ("
        return
    box = main(session.tab).locator('[data-testid="stNumberInput"]').filter(has_text="Gallery image #")
    box.locator("input").fill(str(query))
    box.locator("input").press("Enter")
    session.query, session.shows = query, f"(#{query}, "


def use_source(session: Session, source: str) -> None:
    """Switch the query source (Gallery / Upload) and wait for the run; an upload query starts empty."""
    main(session.tab).locator('[data-testid="stRadio"] label').filter(has_text=re.compile(f"^{source}$")).click()
    session.tab.wait_for_timeout(300)
    wait_idle(session.tab, STEP_S)
    if source == "Upload":
        session.query = session.shows = None


def settle(session: Session, timeout_s: float = STEP_S) -> None:
    """Until the page shows the session's checkpoint and query (the query unchecked while None)."""
    try:
        session.tab.wait_for_function(READY, arg=[CHECKPOINTS[session.checkpoint], session.shows],
                                      timeout=timeout_s * 1000)
    except Exception as err:  # say what the page shows instead
        raise AssertionError(f"{session.name} waited {timeout_s:.0f} s for {session.checkpoint} and "
                             f"{session.shows!r}; the page shows: {session.tab.evaluate(STATE)}") from err


def results(session: Session, timeout_s: float = STEP_S) -> list[str]:
    """The shown top K once the page shows the session's checkpoint and query; problems are recorded."""
    settle(session, timeout_s)
    tab = session.tab
    session.errors += tab.locator('[data-testid="stException"]').all_inner_texts()
    session.errors += tab.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    session.errors += tab.page_errors
    tab.page_errors.clear()
    session.retrievals += 1
    shown = main(tab).locator('[data-testid="stImageCaption"]').all_inner_texts()
    return [c.strip() for c in shown if RESULT.match(c.strip())]


def plan(index: int) -> Iterator[tuple[str, int | str]]:
    """Session `index`'s endless order of (checkpoint, query) pairs; each session starts elsewhere."""
    names = list(CHECKPOINTS)
    names = names[index % len(names):] + names[: index % len(names)]
    queries: list[int | str] = list(UPLOADS) if index >= SESSIONS - UPLOADERS else list(GALLERY_QUERIES)
    queries = queries[index % len(queries):] + queries[: index % len(queries)]
    return itertools.cycle([(c, q) for q in queries for c in names])


def test_four_sessions_at_once_get_what_one_session_gets(chromium: str, server: LabServer,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from playwright.sync_api import sync_playwright

    uploads = Uploads(tmp_path_factory.mktemp("uploads"))
    with sync_playwright() as playwright:
        context = launch_chromium(playwright, chromium, str(tmp_path_factory.mktemp("chromium-profile")))
        try:
            sessions = []
            for n in range(SESSIONS):
                tab = context.new_page()
                tab.set_default_timeout(60_000)
                tab.page_errors = []
                tab.on("pageerror", lambda err, tab=tab: tab.page_errors.append(str(err)))
                sessions.append(Session(tab, f"session {n}"))

            # 0. four first runs at once, on a fresh server
            open_retrieval([s.tab for s in sessions], server.url)
            first = [results(s, FIRST_RENDER_S) for s in sessions]

            # 1. one session alone: the reference top K of every pair the plans use
            alone = sessions[0]
            reference: dict[tuple[str, int | str], list[str]] = {}
            for source, queries in (("Gallery", GALLERY_QUERIES), ("Upload", tuple(UPLOADS))):
                if source == "Upload":
                    use_source(alone, "Upload")
                for checkpoint in CHECKPOINTS:
                    if checkpoint != alone.checkpoint:
                        choose_checkpoint(alone, checkpoint)
                        settle(alone)  # a query typed while the switch runs could be lost
                    for query in queries:
                        if query != alone.query:
                            choose_query(alone, query, uploads)
                        reference[checkpoint, query] = results(alone)
                        assert len(reference[checkpoint, query]) == 8, reference[checkpoint, query]
            assert not alone.errors, alone.errors
            assert all(got == reference["demo-pre-dimension", 0] for got in first), first
            tops = {c: tuple(reference[c, GALLERY_QUERIES[1]]) for c in CHECKPOINTS}
            assert len(set(tops.values())) > 1, tops  # the checkpoints rank differently: a mix-up would show

            # 2. four sessions at once
            use_source(alone, "Gallery")  # the gallery query it had before the uploads is back
            alone.query, alone.shows = GALLERY_QUERIES[-1], f"(#{GALLERY_QUERIES[-1]}, "
            for session in sessions[SESSIONS - UPLOADERS:]:
                use_source(session, "Upload")
            plans = [plan(n) for n in range(SESSIONS)]
            checked = {s.name: 0 for s in sessions}
            rounds = 0
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                steps = [next(order) for order in plans]
                for session, (checkpoint, _) in zip(sessions, steps, strict=True):  # all switch at once
                    if checkpoint != session.checkpoint:
                        choose_checkpoint(session, checkpoint)
                        session.switches += 1
                for session in sessions:
                    settle(session)
                for session, (_, query) in zip(sessions, steps, strict=True):  # then all query at once
                    if isinstance(query, str) or query != session.query:  # uploads: a new file every time
                        choose_query(session, query, uploads)
                for session in sessions:
                    got = results(session)
                    expected = reference[session.checkpoint, session.query]
                    assert got == expected, (session.name, session.checkpoint, session.query, got, expected)
                    checked[session.name] += 1
                rounds += 1
            for session in sessions:
                assert not session.errors, (session.name, session.errors)
                assert checked[session.name] >= 2 and session.switches >= 1, (session.name, checked, session.switches)
            print(f"\n{rounds} rounds of {SESSIONS} sessions at once in {SECONDS:.0f} s, "
                  f"{uploads.count} uploads embedded")
        except Exception:
            print(f"Streamlit server log:\n{server.log_tail()}")
            raise
        finally:
            context.close()
