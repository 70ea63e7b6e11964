"""The Retrieval page: top K with marks and one branch-share chart, uploads as queries, Recall@K,
partial results while the gallery is embedded, and "Why these two match"."""

from __future__ import annotations

import re

import pytest
from lab_testing import assert_ok, figures, open_page, png, settle, texts


def result_captions(app) -> list[str]:
    return [c for image in app.image for c in image.captions if c[:1] in "✓✗" or c[:1].isdigit()]


def shares_table(app):
    """The entry shares of "Why these two match" (a pandas DataFrame)."""
    (table,) = [t.value for t in app.table if "share of the cosine" in t.value.columns]
    return table.astype({"share of the cosine": float})


def test_top_k_with_marks_and_branch_shares(app):
    open_page(app, "retrieval")
    settle(app)
    assert_ok(app)
    assert "Retrieval" in texts(app.header)
    results = result_captions(app)
    assert len(results) == 8  # K = 8 by default (12 images, the query left out)
    assert all(c[:1] in "✓✗" for c in results)
    (chart,) = [f for f in figures(app) if f.layout.title.text.startswith("Branch shares")]  # one chart for all K
    bars = [t for t in chart.data if t.type == "bar"]
    assert len(bars) == 4 and all(len(t.y) == 8 for t in bars)  # N = 4 branches x K = 8 results
    similarities = [float(c.split(" · ")[1]) for c in results]
    assert [sum(t.y[r] for t in bars) for r in range(8)] == pytest.approx(similarities, abs=6e-4)
    assert "Recall@1" in app.dataframe[-1].value.columns  # the gallery's Recall@K
    assert app.metric[0].label == "Same class in the top K"
    assert "Top 8 results" in texts(app.subheader)  # complete: not marked partial


def test_why_these_two_match(app):
    open_page(app, "retrieval")
    settle(app)
    assert "Why these two match" in texts(app.subheader)
    for rank in (0, 3):
        app.selectbox(key="retrieval_match").set_value(rank).run()
        assert_ok(app)
        cosine = float(next(m for m in app.metric if m.label == "Cosine of the pair").value)
        shares = shares_table(app)["share of the cosine"]
        assert len(shares) == 4 and sum(shares) == pytest.approx(cosine, abs=4 * 5e-5 + 5e-5)
        # the cosine is the result's similarity in the ranking
        similarity = float(result_captions(app)[rank].split(" · ")[1])
        assert cosine == pytest.approx(similarity, abs=1.5e-3)
        pairs = [c for image in app.image for c in image.captions if re.match(r"entry \d · (query|result)", c)]
        assert len(pairs) == 8  # query and result maps of each of the 4 entries
        links = [c for image in app.image for c in image.captions if "strongest region-to-region links" in c]
        assert links == ["The 8 strongest region-to-region links of all entries (query left, result right)"]
    assert any("psi's output grid" in c for c in texts(app.caption))  # the demo is pre-attention
    app.selectbox(key="retrieval_match_entry").set_value("entry 2")
    app.slider(key="retrieval_match_links").set_value(3).run()
    assert_ok(app)
    assert any("The 3 strongest region-to-region links of entry 2" in c for i in app.image for c in i.captions)
    download = app.get("download_button")
    assert any(d.proto.label == "Why these two match (PNG)" for d in download)


def test_why_these_two_match_post_attention_and_baseline(app):
    app.run()
    for name, where, entries in (("demo-post-feature", "the grid of G = psi(F)", 4), ("demo-baseline", "baseline", 1)):
        app.selectbox(key="checkpoint").set_value(f"{name}.safetensors").run()
        app.switch_page("views/retrieval.py").run()
        settle(app)
        assert_ok(app)
        assert any(where in c for c in texts(app.caption)), name
        shares = shares_table(app)["share of the cosine"]
        assert len(shares) == entries


def test_run_a_retrieval_for_another_query_and_k(app):
    open_page(app, "retrieval")
    settle(app)
    app.number_input(key="retrieval_item").set_value(5)
    app.slider(key="retrieval_k").set_value(3).run()
    assert_ok(app)
    assert len(result_captions(app)) == 3
    assert not any("#5 ·" in c for c in result_captions(app))  # the query is left out of its results
    assert any(c.startswith("Query:") and "(#5," in c for i in app.image for c in i.captions)


def test_upload_as_query_and_a_bad_upload(app):
    open_page(app, "retrieval")
    settle(app)
    app.radio(key="retrieval_source").set_value("Upload").run()
    app.file_uploader(key="retrieval_upload").set_value(("q.png", png((80, 80)), "image/png")).run()
    assert_ok(app)
    assert len(result_captions(app)) == 8
    assert not any(c[:1] in "✓✗" for c in result_captions(app))  # no label, no marks
    app.file_uploader(key="retrieval_upload").set_value(("q.png", b"GIF89a broken", "image/gif")).run()
    assert_ok(app)
    assert app.error


def test_baseline_has_no_branch_chart(app):
    app.run()
    app.selectbox(key="checkpoint").set_value("demo-baseline.safetensors").run()
    app.switch_page("views/retrieval.py").run()
    settle(app)
    assert_ok(app)
    assert len(result_captions(app)) == 8 and not app.get("plotly_chart")
