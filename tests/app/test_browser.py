"""The lab in a real browser: `streamlit run app/main.py` driven by Playwright in Debian's Chromium.

Opens every page through the sidebar navigation, checks that its key elements are drawn (header,
images, charts, tables), runs a retrieval by hand (another query, another K, a pick from the
gallery grid) and saves a screenshot of each page to $DIABLO_SCREENSHOTS (else a tmp folder; the
path is printed at the end of the session). The server runs on the stand-in checkpoints and the
tiny gallery of conftest.py, with its own empty cache, so the first page also embeds the gallery.

Chromium is required, not optional: without it the test fails and says to run `make system`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from lab_browser import (
    PAGES,
    LabServer,
    chromium_path,
    heading,
    launch_chromium,
    missing_chromium_message,
    open_page,
    screenshot,
    wait_idle,
)

pytestmark = pytest.mark.timeout(400)

FIRST_RENDER_S = 180  # the first run imports torch, loads the checkpoint and embeds the gallery
RESULT = re.compile(r"^[✓✗] \d+\. #\d+ · ")  # a retrieval result's caption


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ["DIABLO_SCREENSHOTS"]) if os.environ.get("DIABLO_SCREENSHOTS") else (
        tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def report() -> None:
        line = f"\nbrowser screenshots ({len(list(folder.glob('*.png')))}): {folder}"
        if capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():  # shown even under -q and on success
            print(line)

    request.addfinalizer(report)
    return folder


@pytest.fixture(scope="module")
def lab_server(request: pytest.FixtureRequest, lab_env: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    env = {"DIABLO_CHECKPOINTS": str(lab_env["checkpoints"]), "DIABLO_CACHE": str(root / "cache"),
           "DIABLO_SYNTHETIC": os.environ["DIABLO_SYNTHETIC"]}  # conftest's tiny gallery
    server = LabServer(env, log=root / "streamlit.log")
    request.addfinalizer(server.stop)  # before start(): the server is stopped whatever happens next
    server.start()
    server.wait_ready(timeout=120)
    return server


@pytest.fixture(scope="module")
def page(chromium: str, lab_server: LabServer, tmp_path_factory: pytest.TempPathFactory):
    """One browser tab on the lab, first page (Attention) fully drawn."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, chromium, str(tmp_path_factory.mktemp("chromium-profile")))
        try:
            tab = context.new_page()
            tab.set_default_timeout(60_000)
            errors: list[str] = []
            tab.on("pageerror", lambda err: errors.append(str(err)))
            tab.goto(lab_server.url)
            heading(tab, "Attention").wait_for(state="visible", timeout=FIRST_RENDER_S * 1000)
            wait_idle(tab, FIRST_RENDER_S)
            tab.page_errors = errors
            yield tab
        except Exception:
            print(f"Streamlit server log:\n{lab_server.log_tail()}")
            raise
        finally:
            context.close()


# ---- checks ---------------------------------------------------------------------------------------


def main(page):
    return page.locator('[data-testid="stMain"]')


def shoot(page, folder: Path, name: str) -> Path:
    page.mouse.move(1, 1)  # no hover tooltip in the picture
    return screenshot(page, folder / f"{name}.png")


def assert_clean(page) -> None:
    """No uncaught exception, no error panel, no JavaScript error."""
    exceptions = main(page).locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.all_inner_texts()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()
    assert not page.page_errors, page.page_errors


def assert_images(page, minimum: int) -> None:
    """At least `minimum` images shown in the main area (not in a closed expander), every one loaded."""
    images = main(page).locator('[data-testid="stImage"] img:visible')
    assert images.count() >= minimum, images.count()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] [data-testid=\"stImage\"] img')]"
        ".filter(img => img.getClientRects().length > 0)"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=30_000,
    )


def subheader(page, text: str):
    return main(page).locator("h3").filter(has_text=text).first


def captions(page, pattern: str | re.Pattern[str]):
    return main(page).locator('[data-testid="stImageCaption"]').filter(has_text=pattern)


def plotly_titles(page) -> list[str]:
    """Titles of the drawn plotly charts (each waited for: plotly draws after the page's run)."""
    charts = main(page).locator('[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg')
    charts.first.wait_for(state="visible", timeout=30_000)
    return [t or "" for t in main(page).locator('[data-testid="stPlotlyChart"] .gtitle').all_text_contents()]


def grid_columns(page) -> list[str]:
    """Column headers of the first data frame in the main area (its grid's accessible table)."""
    headers = main(page).locator('[data-testid="stDataFrame"]').first.locator('[role="columnheader"]')
    headers.first.wait_for(state="attached", timeout=30_000)
    return [t.strip() for t in headers.all_text_contents()]


def wait_background(page, locator, timeout_s: float = 120.0) -> None:
    """Until `locator` shows: what a page draws once the lab's background pass is done (its polling
    fragment reruns the page), then until that run has finished."""
    locator.wait_for(state="visible", timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def check_attention(page) -> None:
    wait_background(page, main(page).locator('[data-testid="stPlotlyChart"]').first)
    assert captions(page, "Hard assignment").first.is_visible()
    assert captions(page, re.compile(r"^entry 0: ")).first.is_visible()
    assert_images(page, 3 + 4)  # image, overlay, assignment and the 4 entries
    for text in ("Every entry", "Entries over the gallery"):
        assert subheader(page, text).is_visible()
    titles = plotly_titles(page)
    assert any(t.startswith("Share of area") for t in titles), titles
    assert "share of area (%)" in grid_columns(page)


def check_compare(page) -> None:
    wait_background(page, main(page).locator('[data-testid="stDataFrame"]').first)
    for label in ("First checkpoint", "Second checkpoint"):
        assert main(page).get_by_label(label).is_visible()
    assert subheader(page, "Attention and top K").is_visible()
    assert captions(page, "hard assignment").count() == 2  # both stand-ins have attention
    assert captions(page, RESULT).count() == 2 * 6  # top 6 of each
    assert_images(page, 8)
    assert subheader(page, "Recall@K on the gallery").is_visible()
    assert {"checkpoint", "variant", "Recall@1"} <= set(grid_columns(page))


def check_embeddings(page) -> None:
    wait_background(page, main(page).locator('[data-testid="stPlotlyChart"]').first)
    titles = plotly_titles(page)
    assert any(t.startswith("PCA of the whole embedding of 12 gallery images") for t in titles), titles
    points = main(page).locator('[data-testid="stPlotlyChart"] .scatterlayer .point')
    assert points.count() == 12
    assert main(page).get_by_text("Draw a box or a lasso").is_visible()


def check_retrieval(page, k: int = 8) -> None:
    wait_background(page, subheader(page, re.compile(rf"^Top {k} results$")))  # not marked partial
    assert main(page).locator('[data-testid="stMetric"]').filter(has_text="Same class in the top K").is_visible()
    assert captions(page, re.compile(r"^Query: ")).first.is_visible()
    results = captions(page, RESULT)
    assert results.count() == k
    assert_images(page, 1 + k)
    assert any(t.startswith("Branch shares of each result") for t in plotly_titles(page))
    assert main(page).locator('[data-testid="stPlotlyChart"]').count() == 1  # one chart for the K results
    assert subheader(page, "Recall@K on the gallery").is_visible()
    assert {"checkpoint", "Recall@1", "Recall@8", "MAP@R"} <= set(grid_columns(page))


def check_attribution(page) -> None:
    assert subheader(page, "Attributions").is_visible()
    for text in ("Integrated Gradients (the whole embedding)", "Grad-CAM (the whole embedding)"):
        assert captions(page, text).first.is_visible()
    assert subheader(page, "Attention of the query and of the result").is_visible()
    assert_images(page, 4 + 2 + 4)


def check_match(page) -> None:
    """'Why these two match' on the Retrieval page: maps, shares that sum to the cosine, links, download."""
    assert subheader(page, "Why these two match").is_visible()
    cosine = main(page).locator('[data-testid="stMetric"]').filter(has_text="Cosine of the pair")
    value = float(cosine.locator('[data-testid="stMetricValue"]').inner_text())
    total = main(page).get_by_text(re.compile(r"shares sum to the cosine: Σ = "))
    assert abs(float(total.inner_text().rsplit("= ", 1)[1].rstrip(".")) - value) <= 1e-4
    shares = main(page).locator('[data-testid="stTable"]').filter(has_text="share of the cosine")
    values = [float(t) for t in shares.locator("tbody tr td:nth-child(2)").all_text_contents()]
    assert len(values) == 4 and abs(sum(values) - value) <= 4 * 5e-5 + 1e-4  # the shares sum to the cosine
    assert captions(page, re.compile(r"^entry \d · query$")).count() == 4
    assert captions(page, re.compile(r"^entry \d · result · share [+-]")).count() == 4
    assert captions(page, "strongest region-to-region links of all entries").first.is_visible()
    assert main(page).get_by_text("psi's output grid").first.is_visible()  # the stand-in is pre-attention
    assert_images(page, 1 + 8 + 1 + 8)
    button = main(page).get_by_role("button", name="Why these two match (PNG)")
    with page.expect_download() as download:
        button.click()
    data = Path(download.value.path()).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def check_training(page) -> None:
    titles = plotly_titles(page)
    assert "Training loss per epoch" in titles and "Recall@K and MAP@R per epoch (%)" in titles, titles
    assert main(page).locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').count() >= 1


CHECKS = {
    "Attention": check_attention, "Compare": check_compare, "Embeddings": check_embeddings,
    "Retrieval": check_retrieval, "Attribution": check_attribution, "Training": check_training,
}  # fmt: skip


# ---- tests ----------------------------------------------------------------------------------------


def test_chromium_is_installed() -> None:
    """Fails, not skips, without Chromium: `make test` installs it (`make system`)."""
    if chromium_path() is None:
        pytest.fail(missing_chromium_message(), pytrace=False)


@pytest.mark.parametrize("title", PAGES)
def test_page_renders(page, screenshots: Path, title: str) -> None:
    open_page(page, title, timeout_s=FIRST_RENDER_S)
    shoot(page, screenshots, f"{PAGES.index(title) + 1}-{title.lower()}")
    assert heading(page, title).is_visible()
    assert_clean(page)
    CHECKS[title](page)


def choose(page, label: str, option) -> None:
    """Open the selectbox `label` and click `option` (a second try if a rerun closed the list at once)."""
    for attempt in range(3):
        wait_idle(page)
        main(page).get_by_role("combobox", name=label).click()
        try:
            option.wait_for(state="visible", timeout=5_000)
            break
        except Exception:
            page.keyboard.press("Escape")
            if attempt == 2:
                raise
    option.click()
    wait_idle(page)


def test_why_these_two_match(page, screenshots: Path) -> None:
    """The match of the query with its first result, then another result and one entry's links."""
    open_page(page, "Retrieval")
    subheader(page, "Why these two match").scroll_into_view_if_needed()
    check_match(page)
    choose(page, "Result to explain", page.get_by_role("option").nth(2))  # the third result
    choose(page, "Links of", page.get_by_role("option", name="entry 2", exact=True))
    captions(page, "strongest region-to-region links of entry 2").first.wait_for(state="visible")
    wait_idle(page)
    assert_clean(page)
    explained = main(page).get_by_text(re.compile("The cosine of the query and result")).inner_text()
    assert "result 3 written exactly" in explained
    shoot(page, screenshots, "8-why-these-two-match")


def test_training_follows_a_run_directory(page, screenshots: Path, tmp_path: Path) -> None:
    """A run directory written here: the page shows its epoch, and the next one by itself (no input)."""
    import json
    import os

    def commit(epochs: int) -> None:
        rows = [{"epoch": e, "step": 4 * e, **({"loss": 1.0 / e} if e else {}), "recall@1": 0.2 + 0.1 * e}
                for e in range(epochs + 1)]
        (tmp_path / "tmp.json").write_text(json.dumps({"format": 1, "epoch": epochs, "step": 4 * epochs,
                                                       "best_epoch": epochs, "history": rows}))
        os.replace(tmp_path / "tmp.json", tmp_path / "run.json")

    commit(1)
    open_page(page, "Training")
    field = main(page).get_by_label("Follow a run directory")
    field.fill(str(tmp_path))
    field.press("Enter")
    main(page).get_by_text(re.compile(r"\(live\): epoch 1, step 4")).wait_for(state="visible")
    commit(2)  # training commits the next epoch; nobody touches the page
    main(page).get_by_text(re.compile(r"\(live\): epoch 2, step 8")).wait_for(state="visible", timeout=20_000)
    legend = main(page).locator('[data-testid="stPlotlyChart"] .legendtext').all_text_contents()
    assert any("(live) · Recall@1" in t for t in legend) and any("demo-pre-dimension" in t for t in legend), legend
    assert_clean(page)
    shoot(page, screenshots, "9-training-live")
    field.fill("")
    field.press("Enter")
    wait_idle(page)


def test_retrieval_by_hand(page, screenshots: Path) -> None:
    """Another query by number, another K with the keyboard, a query picked from the gallery grid."""
    open_page(page, "Retrieval")
    query = main(page).locator('[data-testid="stNumberInput"]').filter(has_text="Gallery image #").locator("input")
    query.fill("5")
    query.press("Enter")
    captions(page, re.compile(r"^Query: .*\(#5, ")).wait_for(state="visible")
    wait_idle(page)
    assert not captions(page, re.compile(r"^[✓✗] \d+\. #5 · ")).count()  # the query is left out of its results

    slider = main(page).get_by_role("slider", name="Top K")
    slider.focus()
    for _ in range(4):  # 8 -> 4
        slider.press("ArrowLeft")
    subheader(page, "Top 4 results").wait_for(state="visible")
    wait_idle(page)
    check_retrieval(page, k=4)

    main(page).get_by_text("Browse the gallery").click()
    main(page).get_by_role("button", name="Pick #7").click()
    captions(page, re.compile(r"^Query: .*\(#7, ")).wait_for(state="visible")
    wait_idle(page)
    assert captions(page, RESULT).count() == 4
    assert_clean(page)
    shoot(page, screenshots, "7-retrieval-by-hand")

    open_page(page, "Attention")  # the picked gallery image is shared by every page
    captions(page, re.compile(r"\(#7, ")).first.wait_for(state="visible")
    assert_clean(page)
