"""Tests of ``shardnet bench sharing`` (shardnet.simulations._sharing_bench), on a small, quick run."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from shardnet.simulations import _sharing_bench as bench

SIZES = [(2, 3), (3, 5)]
EXPECTED_ERRORS = {
    "t-1 shares": "TooFewShares",
    "corrupt 1 of t": "TooFewShares",
    "duplicate, t distinct": "DuplicateShare",
    "duplicate, t-1 distinct": "DuplicateShare",
    "mixed splits": "MixedShares",
}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    messages: list[str] = []
    out = bench.run_sharing_bench(
        repeats=3, sizes=SIZES, cell_budget_s=0.05, progress=messages.append
    )
    assert messages, "progress was never called"
    return out


def test_json_ready_and_described(result: dict[str, Any]) -> None:
    assert result["schema"] == bench.SCHEMA
    assert result["secret_bytes"] == 32
    assert json.loads(json.dumps(result)) == result
    names = [i["impl"] for i in result["impls"]]
    assert names[:2] == [bench.SHARDNET, bench.VSS_ONLY]
    # Every peer is either loaded or reported missing, never silently dropped.
    assert set(names[2:]) | set(result["missing"]) == set(bench.PEERS)


def test_timing_rows_are_real_measurements(result: dict[str, Any]) -> None:
    rows = {(r["impl"], r["t"], r["n"]): r for r in result["timing"]}
    names = [i["impl"] for i in result["impls"]]
    assert set(rows) == {(name, t, n) for name in names for t, n in SIZES}
    for r in rows.values():
        assert {"impl", "t", "n", "split_us", "combine_us"} <= set(r)
        for op in ("split", "combine"):
            assert isinstance(r[f"{op}_us"], float) and r[f"{op}_us"] > 0, r
            assert r[f"{op}_samples"] in (1, 2, 3)
    for t, n in SIZES:
        mine = rows[bench.SHARDNET, t, n]
        assert mine["combine_key_us"] > 0 and mine["batch_verify_us"] > 0
        assert isinstance(mine["split_x_fastest_peer"], float)
        assert isinstance(mine["combine_x_fastest_peer"], float)


def test_correctness_table(result: dict[str, Any]) -> None:
    corr = result["correctness"]
    case_names = [c["name"] for c in result["cases"]]
    for i in result["impls"]:
        assert sorted(c["case"] for c in corr if c["impl"] == i["impl"]) == sorted(case_names)
    for c in corr:
        assert c["result"].startswith(("raised ", "returned the correct secret",
                                       "returned a WRONG secret", "not run"))
    mine = {c["case"]: c for c in corr if c["impl"] == bench.SHARDNET}
    for case, error in EXPECTED_ERRORS.items():
        assert mine[case]["result"] == f"raised {error}"
        assert mine[case]["shardnet_error"] is True
    ok = mine["corrupt 1 of t+1"]
    assert ok["outcome"] == "correct" and ok["named_bad"] == [1]
    assert ok["result"] == "returned the correct secret (named bad share 1)"


def test_targets(result: dict[str, Any]) -> None:
    targets = result["targets"]
    by_name = {(x["target"], x.get("t"), x.get("n")): x for x in targets}
    for x in targets:
        assert x["met"] in (True, False, None) and x["detail"]
    # Measured in this run: a real ratio and a verdict that follows from it.
    split = by_name["split <= 2x fastest peer split", 3, 5]
    assert split["ratio"] > 0 and split["met"] == (split["ratio"] <= 2.0)
    combine = by_name["combine <= 1x fastest peer combine", 3, 5]
    assert combine["ratio"] > 0 and combine["met"] == (combine["ratio"] <= 1.0)
    batch = by_name["batch verify of t shares < 1 ms", 3, 5]
    assert batch["value_us"] > 0 and batch["met"] == (batch["value_us"] < 1000)
    # Not measured in this run: no verdict rather than an invented one.
    assert by_name["combine <= 1.5x fastest peer combine", 50, 100]["met"] is None
    assert by_name["every failure case raises a named error", None, None]["met"] is True
    assert by_name["corrupt 1 of t+1: recovers and names the bad share", None, None]["met"] is True
    decided = [x for x in targets if x["met"] is not None]
    assert result["targets_decided"] == len(decided)
    assert result["targets_met"] == sum(1 for x in decided if x["met"])


def test_format_report(result: dict[str, Any]) -> None:
    text = bench.format_report(result)
    for heading in ("Timing", "Correctness", "Targets"):
        assert heading in text
    for i in result["impls"]:
        assert i["impl"] in text
    assert "raised TooFewShares" in text and "named bad share 1" in text


def test_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyshamir", None)  # import now raises ImportError
    out = bench.run_sharing_bench(
        repeats=1, sizes=[(2, 3)], peers=["pyshamir"], cell_budget_s=0.01, correctness_tn=(2, 3)
    )
    assert "pyshamir" in out["missing"]
    assert {r["impl"] for r in out["timing"]} == {bench.SHARDNET, bench.VSS_ONLY}
    assert "pyshamir: skipped" in bench.format_report(out)


def test_unknown_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        bench.run_sharing_bench(repeats=1, sizes=[(2, 3)], peers=["nope"])
