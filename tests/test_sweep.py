"""`shardnet sim sweep` (simulations/_sweep.py): the same seeded runs give the same table on a
local process pool and on a real Dask cluster (distributed.LocalCluster on loopback)."""

from __future__ import annotations

import json

import pytest

from shardnet.simulations import _sweep as sw
from shardnet.simulations._local import run_cli

SWEEP = ("sim", "sweep", "survive", "--topology", "continents:60:5", "--seeds", "1-3", "--param", "t=2,3",
         "--param", "placement=;distinct:continent", "--trials", "20000", "--fail", "continent:0.1,node:0.05",
         "--json")


def test_seeds_params_and_the_grid() -> None:
    assert sw.parse_seeds("1-3,7") == [1, 2, 3, 7]
    varied = sw.parse_params(["t=2,3", "placement=distinct:country,exclude:country=DE;"], sw.SURVIVE_PARAMS)
    assert varied == {"t": [2, 3], "placement": ["distinct:country,exclude:country=DE", ""]}
    runs = sw.grid({"n": 5}, varied, [1, 2])
    assert len(runs) == 8 and runs[0] == {"n": 5, "placement": "distinct:country,exclude:country=DE", "t": 2,
                                          "seed": 1}
    for bad in (["x=1"], ["t=two"], ["t=2", "t=3"]):
        with pytest.raises(ValueError):
            sw.parse_params(bad, sw.SURVIVE_PARAMS)
    for bad in ("a-b", "-5", "5-1", "1-1000000000", ""):
        with pytest.raises(ValueError, match="seeds"):
            sw.parse_seeds(bad)
    with pytest.raises(ValueError, match="at most"):
        sw.grid({}, {"t": list(range(1000))}, range(11))


def test_a_sweep_on_a_dask_cluster_matches_the_local_pool() -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is installed by the set-up")
    local = run_cli(*SWEEP, "--workers", "2", timeout=300)
    assert local.returncode == 0, local.stderr
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        remote = run_cli(*SWEEP, "--scheduler", cluster.scheduler_address, timeout=300)
        assert remote.returncode == 0, remote.stderr
        with distributed.Client(cluster) as client:  # the 12 runs went through the cluster's scheduler
            done = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
            assert done >= 12 * 3, done  # each task: released -> waiting -> processing -> memory
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert b["engine"].startswith("tcp://127.0.0.1:") and a["engine"] == "local processes"
    assert len(a["runs"]) == 12 and [r["survival"] for r in a["runs"]] == [r["survival"] for r in b["runs"]]
    assert {(r["t"], r["placement"], r["seed"]) for r in a["runs"]} == {
        (t, pl, s) for t in (2, 3) for pl in ("", "distinct:continent") for s in (1, 2, 3)}
    r = run_cli(*SWEEP, "--scheduler", "tcp://127.0.0.1:9", timeout=120)
    assert r.returncode != 0 and "no Dask scheduler" in r.stderr and "Traceback" not in r.stderr, r.stderr
