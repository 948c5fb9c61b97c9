"""`shardnet bench soak`: real node processes under a steady load, one restarted in turn."""

from __future__ import annotations

import json
import pathlib

import pytest

from shardnet.simulations._local import run_cli
from shardnet.simulations._soak import _latency, _slopes


@pytest.mark.slow
def test_a_short_soak_through_the_cli_reports_slopes_latencies_and_no_errors(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "soak.json"
    r = run_cli("bench", "soak", "--minutes", "0.5", "--nodes", "5", "--every", "1", "--restart-every", "8",
                "--sample-every", "3", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    print(r.stdout)  # the report, shown with a failure
    assert d["errors"] == {} and d["audit_ok"], d["first_errors"]
    assert d["imports"]["count"] >= 5 and d["reconstructions"]["count"] >= 5
    assert 0 < d["imports"]["p50_ms"] <= d["imports"]["p99_ms"] <= d["imports"]["max_ms"]
    assert len(d["restarts"]) >= 2 and {x["node"] for x in d["restarts"]} <= set(d["per_node"])
    assert len(d["per_node"]) == 5
    restarted = {x["node"] for x in d["restarts"]}
    for name, s in d["per_node"].items():  # each sample is of a node up and past its warm-up
        assert s["samples"] >= 2 and s["rss_mib"][0] > 30 and s["fds"][0] > 10, (name, s)
        assert s["processes"] <= (2 if name in restarted else 1)
    assert sum(s["processes"] == 2 for s in d["per_node"].values()) >= 2  # seen back after a restart
    assert 40 <= d["ops_per_min"] <= 63  # one a second (and the one at 0 s), none made up in a burst
    assert d["bounds"]["fsync_ms"] > 0 and d["bounds"]["control_rtt_ms"] > 0
    assert "p99" in r.stdout and "MiB/min" in r.stdout


def test_slopes_are_taken_over_the_longest_run_of_one_process() -> None:
    # pid 1 leaks 2 MiB and 1 fd a minute for 3 minutes; pid 2 (after a restart) is short.
    rows = [(60.0 * m, 1, 50.0 + 2 * m, 20 + m) for m in range(4)] + [(240.0, 2, 40.0, 15), (250.0, 2, 90.0, 99)]
    s = _slopes(rows)
    assert s["rss_mib_per_min"] == pytest.approx(2.0) and s["fds_per_min"] == pytest.approx(1.0)
    assert (s["samples"], s["span_min"], s["processes"], s["rss_mib"], s["fds"]) == (4, 3.0, 2, [50.0, 56.0], [20, 23])
    assert "rss_mib_per_min" not in _slopes(rows[:2])  # two samples: no slope claimed
    # A warm-up of 60 s leaves pid 1's first sample out, and all of pid 2.
    w = _slopes(rows, 60)
    assert (w["samples"], w["rss_mib"], w["processes"]) == (3, [52.0, 56.0], 2)
    assert _slopes(rows[:1], 60) == {"samples": 0, "span_min": 0.0, "processes": 1}


def test_latency_percentiles() -> None:
    q = _latency([float(x) for x in range(1, 101)])
    assert (q["count"], q["p50_ms"], q["p99_ms"], q["max_ms"]) == (100, 50.5, 99.0, 100.0)
    assert _latency([]) == {"count": 0} and _latency([7.0])["p99_ms"] == 7.0


def test_bad_options_are_one_line_and_exit_2() -> None:
    for args in (["--nodes", "3"], ["--minutes", "0"], ["--minutes", "9999"], ["--every", "-1"]):
        r = run_cli("bench", "soak", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2, r.stderr  # usage line + error
