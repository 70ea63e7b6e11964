"""app.lab.output and the small shared helpers: captions, metric rows, entry colours, gallery specs."""

from __future__ import annotations

from app.lab.errors import describe_error, with_type
from app.lab.figures import entry_colours
from app.lab.galleries import GallerySpec
from app.lab.output import metrics_row, result_captions


class _Gallery:
    labels = [0, 1, 0, 1]

    def class_name(self, index: int) -> str:
        return f"class {self.labels[index]}"


def test_entry_colours_and_metrics_row():
    colours = entry_colours(12)
    assert len(colours) == 12 and len(set(colours)) == 12 and all(c.startswith("#") and len(c) == 7 for c in colours)
    assert metrics_row({"recall@1": 0.5, "map@r": None, "nmi": 0.25}) == {
        "Recall@1": "50.0", "MAP@R": "n/a", "NMI": "25.0"}


def test_result_captions_mark_the_query_class_only_when_known():
    captions, marks = result_captions(_Gallery(), [2, 1], [0.9, 0.25], query_label=0)
    assert captions == ["✓ 1. #2 · 0.900 · class 0", "✗ 2. #1 · 0.250 · class 1"] and marks == [True, False]
    captions, marks = result_captions(_Gallery(), [3], [0.5], query_label=None)
    assert captions == ["1. #3 · 0.500 · class 1"] and marks == [None]


def test_gallery_spec_describes_itself_stably():
    a = GallerySpec("synthetic", "test", None, (("num_classes", 6),))
    b = GallerySpec("synthetic", "test", None, (("num_classes", 6),))
    assert a.describe() == b.describe() and hash(a) == hash(b)
    assert a.describe() != GallerySpec("synthetic", "test", None, (("num_classes", 8),)).describe()


def test_errors_are_one_line():
    assert describe_error(ValueError("first\nsecond")) == "first"
    assert describe_error(KeyError()) == "KeyError"
    assert with_type(OSError("disk")) == "OSError: disk"
    long = describe_error(ValueError("x" * 1000))
    assert len(long) == 300 and long.endswith("…")
