"""app.lab.store.Store: each value computed once, even when sessions ask at the same time; bounded."""

from __future__ import annotations

import threading
import time

from app.lab.store import Store, read_json, write_json


def test_concurrent_askers_share_one_computation():
    store = Store()
    calls = []

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return {"value": 42}

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.memo("k", compute))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)


def test_least_recently_used_values_are_dropped():
    store = Store(size=2)
    store.put("a", 1)
    store.put("b", 2)
    assert store.get("a") == 1  # "a" is now the most recent
    store.put("c", 3)
    assert store.get("b") is None and store.get("a") == 1 and store.get("c") == 3
    assert store.memo("b", lambda: 20) == 20 and store.get("a") is None


def test_a_failed_computation_is_not_stored():
    store = Store()

    def fail():
        raise OSError("disk")

    try:
        store.memo("k", fail)
    except OSError:
        pass
    assert store.get("k") is None and store.memo("k", lambda: 1) == 1


def test_json_helpers(tmp_path):
    write_json(tmp_path / "sub" / "a.json", {"x": [1, None]})
    assert read_json(tmp_path / "sub" / "a.json") == {"x": [1, None]}
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None
