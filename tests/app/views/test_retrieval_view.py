"""The Retrieval page: top K with marks and branch shares, uploads as queries, Recall@K."""

from __future__ import annotations

from lab_testing import assert_ok, open_page, png, texts


def result_captions(app) -> list[str]:
    return [c for image in app.image for c in image.captions if c[:1] in "✓✗" or c[:1].isdigit()]


def test_top_k_with_marks_and_branch_shares(app):
    open_page(app, "retrieval")
    assert_ok(app)
    assert "Retrieval" in texts(app.header)
    results = result_captions(app)
    assert len(results) == 8  # K = 8 by default (12 images, the query left out)
    assert all(c[:1] in "✓✗" for c in results)
    assert len(app.get("plotly_chart")) == 8  # one branch-share chart per result
    assert len(app.dataframe) == 1  # the gallery's Recall@K
    assert "Recall@1" in app.dataframe[0].value.columns
    assert app.metric[0].label == "Same class in the top K"


def test_run_a_retrieval_for_another_query_and_k(app):
    open_page(app, "retrieval")
    app.number_input(key="retrieval_item").set_value(5)
    app.slider(key="retrieval_k").set_value(3).run()
    assert_ok(app)
    assert len(result_captions(app)) == 3
    assert not any("#5 ·" in c for c in result_captions(app))  # the query is left out of its results
    assert any(c.startswith("Query:") and "(#5," in c for i in app.image for c in i.captions)


def test_upload_as_query_and_a_bad_upload(app):
    open_page(app, "retrieval")
    app.radio(key="retrieval_source").set_value("Upload").run()
    app.file_uploader(key="retrieval_upload").set_value(("q.png", png((80, 80)), "image/png")).run()
    assert_ok(app)
    assert len(result_captions(app)) == 8
    assert not any(c[:1] in "✓✗" for c in result_captions(app))  # no label, no marks
    app.file_uploader(key="retrieval_upload").set_value(("q.png", b"GIF89a broken", "image/gif")).run()
    assert_ok(app)
    assert app.error


def test_baseline_has_no_branch_charts(app):
    app.run()
    app.selectbox(key="checkpoint").set_value("demo-baseline.safetensors").run()
    app.switch_page("views/retrieval.py").run()
    assert_ok(app)
    assert len(result_captions(app)) == 8 and not app.get("plotly_chart")
