"""app.lab.store.Store: background jobs run step by step by one worker, each once, the page that
asked last first; failures kept (with a retry), cached values finished at once; bounded."""

from __future__ import annotations

import threading
import time

import pytest

from app.lab.store import Store, read_json, write_json


def steps(n: int, pause: float = 0.0, log: list | None = None, name: str = ""):
    def make():
        for i in range(1, n + 1):
            time.sleep(pause)
            if log is not None:
                log.append(name)
            yield i, n, i
        return f"{name} done"

    return make


def test_a_job_runs_in_the_background_with_progress():
    store = Store()
    gate = threading.Event()

    def make():
        yield 1, 2, "half"
        gate.wait(10)
        yield 2, 2, "all"
        return "result"

    job = store.job("k", "label", make)
    deadline = time.monotonic() + 10
    while job.done < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (job.done, job.total, job.partial, job.fraction) == (1, 2, "half", 0.5) and not job.finished
    assert store.pending() == [job]
    gate.set()
    assert job.wait(10) and job.ok and job.result == "result" and job.partial is None and job.fraction == 1.0
    assert store.pending() == []


def test_askers_share_one_job_and_a_cached_value_needs_no_work():
    store = Store()
    calls = []

    def make():
        calls.append(1)
        yield 1, 1, None
        return 42

    jobs = []
    threads = [threading.Thread(target=lambda: jobs.append(store.job("k", "x", make))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(j is jobs[0] for j in jobs) and jobs[0].wait(10) and jobs[0].result == 42 and calls == [1]
    cached = store.job("c", "x", lambda: pytest.fail("no work for a cached value"), cached=lambda: "from disk")
    assert cached.ok and cached.result == "from disk"


def test_the_job_asked_for_last_goes_first():
    store = Store()
    log: list[str] = []
    slow = store.job("slow", "slow", steps(20, 0.02, log, "slow"))
    deadline = time.monotonic() + 10
    while not log and time.monotonic() < deadline:
        time.sleep(0.005)
    fast = store.job("fast", "fast", steps(3, 0.0, log, "fast"))
    assert fast.wait(10) and not slow.finished  # it overtook the one already running
    assert slow.wait(10) and log.count("slow") == 20 and log.count("fast") == 3
    assert store.wait_idle(10)


def test_a_failure_is_kept_until_forgotten():
    store = Store()

    def fail():
        yield 1, 2, None
        raise OSError("disk full")

    job = store.job("k", "x", fail)
    assert job.wait(10) and not job.ok and job.error == "OSError: disk full"
    assert store.job("k", "x", steps(1)) is job  # still failed: the page shows it with a retry
    store.forget("k")
    again = store.job("k", "x", steps(1, name="again"))
    assert again is not job and again.wait(10) and again.result == "again done"


def test_finished_jobs_beyond_the_size_are_dropped_oldest_first():
    store = Store(size=2)
    for key in "abc":
        store.job(key, key, steps(1)).wait(10)
    store.wait_idle(10)
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None


def test_json_helpers(tmp_path):
    write_json(tmp_path / "sub" / "a.json", {"x": [1, None]})
    assert read_json(tmp_path / "sub" / "a.json") == {"x": [1, None]}
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None
