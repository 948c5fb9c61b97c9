"""`shardnet sim sweep` (simulations/_sweep.py): the same seeded runs give the same table on a
local process pool and on a real Dask cluster (distributed.LocalCluster on loopback); a run a
seed makes impossible fails alone; Ctrl-C, a cluster without workers or a lost scheduler end the
sweep at once, in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from shardnet.simulations import _sweep as sw
from shardnet.simulations._local import CLI, run_cli

SWEEP = ("sim", "sweep", "survive", "--topology", "continents:60:5", "--seeds", "1-3", "--param", "t=2,3",
         "--param", "placement=;distinct:continent", "--trials", "20000", "--fail", "continent:0.1,node:0.05",
         "--json")


def loopback_cluster(distributed: Any, *, workers: int, threads: int = 1) -> Any:
    """A real Dask cluster of worker processes, on loopback only."""
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                    dashboard_address="127.0.0.1:0")

def test_seeds_params_and_the_grid() -> None:
    assert sw.parse_seeds("1-3,7") == [1, 2, 3, 7]
    varied = sw.parse_params(["t=2,3", "placement=distinct:country,exclude:country=DE;"], sw.SURVIVE_PARAMS)
    assert varied == {"t": [2, 3], "placement": ["distinct:country,exclude:country=DE", ""]}
    runs = sw.grid({"n": 5}, varied, [1, 2])
    assert [(r["placement"], r["t"], r["seed"]) for r in runs] == [
        (pl, t, s) for pl in ("distinct:country,exclude:country=DE", "") for t in (2, 3) for s in (1, 2)]
    assert runs[0] == {"n": 5, "placement": "distinct:country,exclude:country=DE", "t": 2, "seed": 1}
    for bad in (["x=1"], ["t=two"], ["t=2", "t=3"], ["t=2,2"]):
        with pytest.raises(ValueError):
            sw.parse_params(bad, sw.SURVIVE_PARAMS)
    for bad in ("a-b", "-5", "5-1", "1-1000000000", "", "\u00b2", "1,1"):
        with pytest.raises(ValueError, match="seed"):
            sw.parse_seeds(bad)
    with pytest.raises(ValueError, match="at most"):  # counted before a list is built
        sw.grid({}, {"t": list(range(10_000)), "n": list(range(10_000))}, range(10_000))


def test_the_table_merges_seeds_and_names_failed_runs() -> None:
    rows = [{"t": 2, "seed": 1, "survival": 0.5}, {"t": 2, "seed": 2, "survival": 0.7},
            {"t": 3, "seed": 1, "error": "no placement"}, {"t": 3, "seed": 2, "survival": 0.1}]
    assert sw.format_table(rows, ["t"]).splitlines() == [
        "T                    SEEDS FAILED  MEAN SURVIVAL       MIN       MAX",
        "2                        2      0       0.600000  0.500000  0.700000",
        "3                        2      1       0.100000  0.100000  0.100000",
        "1 of 4 runs failed; the first (seed 1): no placement"]


def test_a_sweep_on_a_dask_cluster_matches_the_local_pool_and_sim_survive() -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is installed by the set-up")
    local = run_cli(*SWEEP, "--workers", "2", timeout=300)
    assert local.returncode == 0, local.stderr
    with loopback_cluster(distributed, workers=2) as cluster:
        remote = run_cli(*SWEEP, "--scheduler", cluster.scheduler_address, timeout=300)
        assert remote.returncode == 0, remote.stderr
        with distributed.Client(cluster) as client:  # the 12 runs went through this cluster's scheduler
            keys = client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.task_prefixes])
            assert "run_one" in keys, keys
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert (a["engine"], b["engine"], b["scheduler"], a["failed"]) == ("local", "dask", cluster.scheduler_address, 0)
    assert [(r["placement"], r["t"], r["seed"]) for r in a["runs"]] == [
        (pl, t, s) for pl in ("", "distinct:continent") for t in (2, 3) for s in (1, 2, 3)]
    assert [r["survival"] for r in a["runs"]] == [r["survival"] for r in b["runs"]]
    one = run_cli("sim", "survive", "--topology", "continents:60:5", "--placement", "distinct:continent", "-t", "3",
                  "-n", "5", "--trials", "20000", "--fail", "continent:0.1,node:0.05", "--seed", "2", "--json")
    [row] = [r for r in a["runs"] if (r["placement"], r["t"], r["seed"]) == ("distinct:continent", 3, 2)]
    assert json.loads(one.stdout)["results"][0]["survival"] == row["survival"]
    r = run_cli(*SWEEP, "--scheduler", "tcp://127.0.0.1:9", timeout=120)
    assert r.returncode == 1 and "no Dask scheduler" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_scheduler_without_workers_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is installed by the set-up")
    monkeypatch.setattr(sw, "WORKER_WAIT", 2.0)
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        t0 = time.monotonic()
        with pytest.raises(OSError, match="has no worker"):
            sw.run_sweep(sw.grid({"topology": "continents:20:5", "placement": "", "t": 2, "n": 3, "trials": 100,
                                  "fail": "node:0.1"}, {}, [1]), scheduler=cluster.scheduler_address)
        assert time.monotonic() - t0 < 30


def test_a_seed_that_cannot_be_placed_fails_alone() -> None:
    r = run_cli("sim", "sweep", "survive", "--topology", "continents:6:2", "-n", "5", "-t", "3", "--placement",
                "distinct:country", "--seeds", "1-9", "--trials", "100", "--workers", "1", "--json")
    data = json.loads(r.stdout)
    failed = [row["seed"] for row in data["runs"] if "error" in row]
    assert r.returncode == 1 and data["failed"] == len(failed) and 0 < len(failed) < 9, (r.returncode, failed)
    assert all(0 <= row["survival"] <= 1 for row in data["runs"] if "error" not in row)


def test_ctrl_c_ends_a_local_sweep_and_its_workers() -> None:
    proc = subprocess.Popen([*CLI, "sim", "sweep", "survive", "--topology", "continents:20:5", "--seeds", "1-10000",
                             "--trials", "3000", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, process_group=0,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(200):  # until the pool's workers are up
            if len(subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()) >= 3:
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err.strip() == "shardnet: interrupted", (proc.returncode, err)
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 1  # none left


def test_a_network_scenario_sweep_gives_each_runs_own_measurements() -> None:
    # Each run is `sim run loss --mode virtual --cpu-model off` with that seed and t: the
    # sweep's rows carry exactly those runs' summaries, merged by t and measurement.
    r = run_cli("sim", "sweep", "loss", "--seeds", "1-2", "--param", "t=2,3", "--param", "nodes=10",
                "--workers", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["mode"] == "virtual" and data["cpu_model"] is False and data["failed"] == 0
    assert [(row["t"], row["seed"]) for row in data["runs"]] == [(2, 1), (2, 2), (3, 1), (3, 2)]
    one = run_cli("sim", "run", "loss", "--nodes", "10", "--seed", "2", "--param", "t=3", "--cpu-model", "off",
                  "--json")
    assert one.returncode == 0, one.stderr
    assert data["runs"][3]["summary"] == json.loads(one.stdout)["summary"]
    lines = sw.format_network_table(data["runs"], data["varied"]).splitlines()  # what the CLI prints
    assert lines[0].split()[:4] == ["NODES", "T", "MEASUREMENT", "SEEDS"]
    assert any(line.split()[:4] == ["10", "3", "reconstruction", "down=0"] for line in lines), lines


@pytest.mark.parametrize("args, says", [
    (("nope",), "no scenario 'nope'"),
    (("loss", "--topology", "g20"), "--topology is for survive"),
    (("loss", "--param", "reps=2"), "NAME one of"),
    (("loss", "--param", "t=0"), "t is a number"),
    (("loss", "--param", "nodes=2"), "nodes: from 3"),
    (("loss", "--param", "placement=distinct:planet"), "planet"),
    (("loss", "--param", "t=6"), "t=6 is more than n=5"),
])
def test_a_network_sweep_refuses_what_no_run_can_take(args: tuple[str, ...], says: str) -> None:
    r = run_cli("sim", "sweep", *args, "--seeds", "1")
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_network_run_its_scenario_refuses_fails_alone_with_the_reason() -> None:
    # Past what the keyset tolerates (n-t = 2 liars, the receipt liar included): the scenario
    # refuses that run, and the sweep says why, in the table's last line, and exits 1.
    r = run_cli("sim", "sweep", "byzantine", "--seeds", "1", "--param", "liars=1,2", "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[-1].startswith("1 of 2 runs failed") and "at most 2 liars" in r.stdout


def test_a_network_sweep_on_dask_needs_single_threaded_workers_and_matches_the_local_pool() -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is installed by the set-up")
    sweep = ("sim", "sweep", "byzantine", "--seeds", "1-2", "--param", "nodes=10", "--json")
    local = run_cli(*sweep, "--workers", "2", timeout=300)
    assert local.returncode == 0, local.stderr
    with loopback_cluster(distributed, workers=2) as cluster:
        remote = run_cli(*sweep, "--scheduler", cluster.scheduler_address, timeout=300)
    assert remote.returncode == 0, remote.stderr
    assert [r["summary"] for r in json.loads(local.stdout)["runs"]] == \
        [r["summary"] for r in json.loads(remote.stdout)["runs"]]
    with loopback_cluster(distributed, workers=1, threads=2) as cluster:
        r = run_cli(*sweep, "--scheduler", cluster.scheduler_address, timeout=120)
    assert r.returncode == 1 and "one thread a worker" in r.stderr and r.stderr.count("\n") == 1, r.stderr
