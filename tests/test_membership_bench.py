"""`shardnet bench membership`, its in-process parts at a small size (the real-node part
is what tests/test_admission.py checks)."""

from __future__ import annotations

from shardnet.simulations._membership_bench import (
    directory_memory,
    format_membership_report,
    grid_admission,
)


def test_junk_descriptors_cost_no_signature_check_and_no_row() -> None:
    r = directory_memory(30, 300)
    assert (r["rows"], r["junk_refused"], r["junk_verifications"]) == (30, 300, 0)
    assert r["memory_growth_from_junk_kib"] < 64


def test_grid_admission_is_measured_and_reported() -> None:
    g = grid_admission(12, lambda m: None)
    assert 0 < g["candidate_everywhere_virtual_s"] < 30
    pc = g["per_candidate"]
    assert pc["candidates"] == 13 and pc["us_per_candidate"] > 0
    real = {"nodes": 10, "samples": [{"admit_command_s": 1.0, "in_every_directory_s": 2.0}]}
    text = format_membership_report({"real": real, "grid": g, "directory_memory": directory_memory(5, 10)})
    assert "a new admission is a candidate on all 12 nodes" in text and "0 signature checks" in text
