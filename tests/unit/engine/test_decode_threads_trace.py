"""The trace arithmetic behind ``benchmarks/decode_threads.py`` on hand-made events: busy time as
a union of intervals, products overlapping across threads, and which trace events count as kernels."""

import gzip
import json

import pytest
from repo import ROOT as REPO_ROOT  # noqa: E402


@pytest.fixture()
def dt(monkeypatch):

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import decode_threads

    return decode_threads


def ev(ts, dur, tid=1, name="dot"):
    return {"name": name, "ts": ts, "dur": dur, "tid": tid}


def test_busy_union_merges_overlaps_and_keeps_gaps(dt):
    assert dt.busy_union_us([ev(0, 10), ev(5, 10, 2), ev(20, 5)]) == 20  # [0,15) + [20,25)
    assert dt.busy_union_us([ev(0, 10), ev(2, 3)]) == 10  # nested
    assert dt.busy_union_us([ev(20, 5), ev(0, 10)]) == 15  # order of the list does not matter
    assert dt.busy_union_us([]) == 0


def test_overlap_counts_only_other_threads(dt):
    assert dt.overlapping([ev(0, 10, 1), ev(5, 10, 2), ev(20, 5, 1)]) == 2  # both of the pair
    assert dt.overlapping([ev(0, 30, 1), ev(5, 5, 2), ev(12, 5, 2)]) == 3  # one long, two short
    assert dt.overlapping([ev(0, 10, 1), ev(5, 3, 1)]) == 0  # same thread: one after another
    assert dt.overlapping([ev(0, 10, 1), ev(10, 5, 2)]) == 0  # touching, not overlapping


def test_kernel_events_drop_host_events_and_suffixes(dt, tmp_path):
    d = tmp_path / "plugins" / "profile" / "run1"
    d.mkdir(parents=True)
    events = [
        {"ph": "X", "name": "dot.241", "ts": 30, "dur": 5, "tid": 7},
        {"ph": "X", "name": "copy_dot_fusion", "ts": 10, "dur": 9, "tid": 8},
        {"ph": "X", "name": "ThunkExecutor::Execute", "ts": 0, "dur": 99, "tid": 7},
        {"ph": "X", "name": "end: dot", "ts": 35, "dur": 0, "tid": 7},
        {"ph": "X", "name": "$profiler.py:271 stop_trace", "ts": 50, "dur": 3, "tid": 1},
        {"ph": "i", "name": "dot.1", "ts": 1, "tid": 7},
    ]
    with gzip.open(d / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    got = dt.kernel_events(str(tmp_path))
    assert [(e["name"], e["ts"], e["tid"]) for e in got] == [("copy_dot_fusion", 10, 8), ("dot", 30, 7)]
    with pytest.raises(RuntimeError, match="no trace"):
        dt.kernel_events(str(tmp_path / "empty"))
