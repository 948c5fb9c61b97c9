"""The scenario harness (simulations/_scenario.py and _scenarios.py): small seeded runs of the
bundled scenarios, on the grid in virtual time and once on real libp2p hosts, checking what they
found, not only that they ran; and `shardnet sim run` as a user runs it."""

from __future__ import annotations

import json
import pathlib
import random

import pytest
import trio
import trio.testing

from shardnet.protocol import placement
from shardnet.simulations import _geo_placement as gp
from shardnet.simulations import _linkfaults as linkfaults
from shardnet.simulations._local import run_cli
from shardnet.simulations._scenario import ScenarioError, parse_params, run_scenario
from shardnet.simulations._scenarios import SCENARIOS
from shardnet.simulations._topology import resolve


def _outcomes(record: dict) -> dict[str, bool]:  # type: ignore[type-arg]
    return {o["name"]: o["ok"] for o in record["outcomes"]}


def test_custodians_down_up_to_n_minus_t_and_one_past() -> None:
    r = run_scenario(SCENARIOS["loss"], nodes=12, seed=2)
    got = _outcomes(r)
    assert [ok for name, ok in got.items()] == [True] * 5, got
    rows = {m["down"]: m for m in r["measurements"]}
    assert all(rows[k]["seconds"] is not None for k in (0, 1, 2, "restarted"))
    assert rows[3]["seconds"] is None  # past n - t: no key, and the round ended cleanly
    assert "fails cleanly" in next(o["name"] for o in r["outcomes"] if "past n-t" in o["name"])
    assert all(m["ratio"] >= 1.0 for m in r["measurements"] if m["ratio"] is not None)  # never under its bound


def test_lossy_links_cost_retransmissions_and_the_key_still_comes_back() -> None:
    r = run_scenario(SCENARIOS["links"], nodes=12, seed=1, params={**SCENARIOS["links"].params, "loss": "0;0.4"})
    assert r["ok"], r["outcomes"]
    median = {row["loss"]: row["median_s"] for row in r["summary"]}
    bound = {row["loss"]: row["median_bound_s"] for row in r["summary"]}
    assert bound[0.4] == bound[0.0]  # a loss is not a physical delay: the bound stays
    assert median[0.4] > median[0.0] + linkfaults.RTO_MIN  # at least one retransmission on the way


def test_link_faults_draw_retransmissions_with_backoff() -> None:
    f = linkfaults.LinkFaults(random.Random(1))
    assert f.penalty("a", "b", 0.05) == 0.0
    f.degrade([("a", "b")], extra_s=0.01, loss=0.999999)
    rto = max(linkfaults.RTO_MIN, 4 * 0.06)
    assert f.penalty("b", "a", 0.05) == pytest.approx(0.01 + rto * (2 ** linkfaults.MAX_TRIES - 1))
    assert f.penalty("a", "c", 0.05) == 0.0  # another pair
    with pytest.raises(ValueError):
        f.degrade(loss=1.0)
    f.restore()
    assert f.penalty("a", "b", 0.05) == 0.0


def test_churn_leaves_and_rejoins_and_every_reconstruction_succeeds() -> None:
    r = run_scenario(SCENARIOS["churn"], nodes=12, seed=1)
    assert r["ok"], r["outcomes"]
    assert any(m["holders_away"] > 0 for m in r["measurements"])  # some asked with holders away
    assert "rejoined" in {s["state"] for s in r["sites"]}  # someone left and came back

def test_refresh_and_reshare_under_churn_never_orphan_the_key() -> None:
    # Seed 2 has reshares that place new holders on custodians that are away: those rounds
    # abort, the old epoch stands, and the key still comes back after each. The CPU model is
    # off: with it, the machine's load moves the rounds' timings, and with them which ones abort.
    r = run_scenario(SCENARIOS["epochs"], nodes=12, seed=2, cpu_model=False)
    assert r["ok"], r["outcomes"]
    rounds = [m for m in r["measurements"] if m["kind"] == "epoch round"]
    assert len(rounds) == 6 and any(m["seconds"] is None for m in rounds) and any(m["seconds"] for m in rounds)
    assert all(m["seconds"] is not None for m in r["measurements"] if m["kind"] == "reconstruction")


def test_refresh_and_reshare_under_churn_on_real_hosts() -> None:
    r = run_scenario(SCENARIOS["epochs"], mode="inprocess", nodes=8, seed=3,
                     params={**SCENARIOS["epochs"].params, "reps": 1, "wait": 30.0})
    assert r["ok"], r["outcomes"]
    assert {m.get("action") for m in r["measurements"]} >= {"refresh", "reshare"}

def test_bulk_reencryption_after_a_revocation_moves_every_keyset() -> None:
    r = run_scenario(SCENARIOS["bulk"], nodes=12, seed=1, cpu_model=False)
    assert r["ok"], r["outcomes"]
    moved = [m for m in r["measurements"] if m["kind"] == "keyset resharded"]
    assert len(moved) == 20 and all(m["seconds"] is not None for m in moved)
    assert len([m for m in r["measurements"] if m["kind"] == "reconstruction" and m["seconds"]]) == 2
    victim = next(i for i, s in enumerate(r["sites"]) if s["role"] == "revoked")
    assert victim != 0


def test_bulk_reencryption_on_real_hosts() -> None:
    r = run_scenario(SCENARIOS["bulk"], mode="inprocess", nodes=7, seed=2,
                     params={**SCENARIOS["bulk"].params, "keysets": 6, "wait": 120.0})
    assert r["ok"], r["outcomes"]
    assert len([m for m in r["measurements"] if m["kind"] == "keyset resharded" and m["seconds"]]) == 6


def test_a_revocation_reaches_every_node_even_those_down_when_it_was_made() -> None:
    r = run_scenario(SCENARIOS["revocation"], nodes=20, seed=3, params={"offline": 2})
    assert r["ok"], r["outcomes"]
    online = [m for m in r["measurements"] if m["kind"] == "revocation" and m["when"] == "online"]
    late = [m for m in r["measurements"] if m["kind"] == "revocation" and m["when"] == "after restart"]
    assert len(online) == 20 - 1 - 1 - 2 and len(late) == 2
    assert all(m["seconds"] is not None and m["seconds"] >= m["bound_s"] for m in online)
    [curve] = [v for k, v in r["series"].items() if k.startswith("revocation reached")]
    assert curve[-1][1] == 1.0


def _byzantine_checked(r: dict) -> None:  # type: ignore[type-arg]
    assert r["ok"], r["outcomes"]
    names = " / ".join(o["name"] for o in r["outcomes"])
    assert "every liar is named" in names and "every double voter is void" in names and "forged" in names, names


def test_byzantine_custodians_are_named_the_forgery_refused_and_the_key_comes_back() -> None:
    r = run_scenario(SCENARIOS["byzantine"], nodes=12, seed=4)
    _byzantine_checked(r)
    m = r["measurements"][0]
    assert (m["liars"], m["receipt_liars"], m["double_voters"]) == (1, 1, 1)
    # a wrong partial, a receipt for a shard not kept, a double vote (perhaps by one of them), a forgery
    assert sum(s["role"] == "liar" for s in r["sites"]) >= 3


def test_byzantine_custodians_on_real_hosts() -> None:
    """The same faults on real libp2p hosts: the equivocation's evidence travels over real
    GossipSub, and the hosts' own validators refuse the forged revocation."""
    r = run_scenario(SCENARIOS["byzantine"], mode="inprocess", nodes=8, seed=2,
                     params={**SCENARIOS["byzantine"].params, "liars": 1, "wait": 20.0})
    _byzantine_checked(r)


def test_a_continent_cut_off_and_healed() -> None:
    r = run_scenario(SCENARIOS["continent"], nodes=15, seed=1)
    assert r["ok"], r["outcomes"]
    assert any(s["state"] == "healed" for s in r["sites"])


def test_the_same_seed_gives_the_same_virtual_run() -> None:
    def once() -> dict:  # type: ignore[type-arg]
        return run_scenario(SCENARIOS["latency"], nodes=20, seed=7, cpu_model=False,
                            params={**SCENARIOS["latency"].params, "reps": 1})
    a, b = once(), once()
    assert a["measurements"] == b["measurements"] and a["sites"] == b["sites"]
    assert len(a["measurements"]) == 4 and all(m["seconds"] for m in a["measurements"])


def test_latency_aware_placements() -> None:
    t = resolve("continents:40:5", seed=1)
    requester = t.sites[0]
    near = gp.choose(t, gp.parse(f"near:{requester.city},distinct:country"), 5, requester=requester,
                     candidates=t.sites[1:])
    rtts = sorted(t.rtt_ms(requester, s) for s in t.sites[1:])
    countries = [t.site(n).country for n in near]
    assert len(set(countries)) == 5 and max(t.rtt_ms(requester, t.site(n)) for n in near) < rtts[-1]
    within = gp.choose(t, gp.parse("max-rtt:120"), 3, requester=requester, candidates=t.sites[1:])
    assert all(t.rtt_ms(requester, t.site(n)) <= 120 for n in within)
    with pytest.raises(placement.PlacementError, match="max-rtt"):
        gp.choose(t, gp.parse("max-rtt:1"), 3, requester=requester, candidates=t.sites[1:])
    with pytest.raises(placement.PlacementError, match="near:Atlantis"):
        gp.choose(t, gp.parse("near:Atlantis"), 3, requester=requester, candidates=t.sites[1:])
    for bad in ("max-rtt:x", "max-rtt:0", "near:", "near:A,near:B", "distinct:planet"):
        with pytest.raises(ValueError):
            gp.parse(bad)


def test_parameters_are_typed_and_unknown_ones_refused() -> None:
    loss = SCENARIOS["loss"]
    assert parse_params(loss, ["t=2", "wait=5"])["t"] == 2
    assert parse_params(SCENARIOS["revocation"], ["offline=0"])["offline"] == 0
    for bad in (["x=1"], ["t=two"], ["t"], ["t=0"], ["wait=nan"], ["wait=-1"], ["t=1000000"]):
        with pytest.raises(ScenarioError):
            parse_params(loss, bad)


def test_sim_run_writes_the_record_and_the_plots(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run"
    r = run_cli("sim", "run", "revocation", "--nodes", "12", "--seed", "5", "--param", "offline=1", "--out", str(out),
                "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert json.loads((out / "run.json").read_text())["measurements"] == record["measurements"]
    assert record["seed"] == 5 and record["command"][:3] == ["shardnet", "sim", "run"]
    assert {"python", "shardnet", "libp2p"} <= set(record["versions"])
    for name in ("propagation.png", "world.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for args, says in ((["nope"], "no scenario"), (["loss", "--seed", "-1"], "--seed"),
                       (["loss", "--param", "placement=distinct:planet"], "unknown attribute")):
        bad = run_cli("sim", "run", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and says in bad.stderr, bad.stderr


def test_a_scenario_on_real_libp2p_hosts_with_the_delay_layer() -> None:
    """The inprocess mode: 8 real hosts on loopback, each pair's topology latency beneath Noise."""
    r = run_scenario(SCENARIOS["loss"], mode="inprocess", nodes=8, seed=2, params={**SCENARIOS["loss"].params,
                                                                                     "wait": 12.0})
    assert r["ok"], r["outcomes"]
    done = [m for m in r["measurements"] if m["seconds"] is not None]
    assert done and all(m["seconds"] >= m["bound_s"] for m in done)  # the delays are really there
    # Every node's processing shares this process: each reconstruction says how much CPU it took.
    assert all(0 < m["cpu_s"] <= m["seconds"] * 1.5 for m in done), done


def test_an_import_the_network_cannot_deliver_stops_the_run_with_one_line(tmp_path: pathlib.Path) -> None:
    # The harness's own failure (here: a custodian down for the whole import wait) is a
    # ClusterFailed that `sim run` prints as one line, not an internal error.
    from shardnet.simulations._cluster import DELIVER_WAIT, ClusterFailed
    from shardnet.simulations._virtual import VirtualCluster

    cluster = VirtualCluster(tmp_path, resolve("continents:6:3", seed=1), seed=1, cpu_model=False)

    async def main() -> float:
        async with cluster.running():
            await cluster.settle()
            await cluster.crash(2)
            t0 = trio.current_time()
            with pytest.raises(ClusterFailed, match=r"an import from node 1 did not deliver every shard within 120 s"):
                await cluster.import_key(1, b"k" * 32, 2, 3, gp.parse("random"), custodians=[2, 3, 4])
            return trio.current_time() - t0

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took >= DELIVER_WAIT - 0.01  # it waited the whole of it
