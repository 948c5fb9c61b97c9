"""The survival Monte Carlo (simulations/_survive.py) and the topologies it reads
(simulations/_topology.py): the estimate agrees with the exact answer where there is one."""

from __future__ import annotations

import pathlib

import pytest

from shardnet.protocol import continent_of
from shardnet.simulations import _survive as sv
from shardnet.simulations import _topology as topo


def test_the_city_table_has_100_real_cities_with_their_continents() -> None:
    table = topo.cities()
    assert len(table) >= 100 and len({c.name for c in table}) == len(table)
    assert all(c.continent == continent_of(c.country) for c in table)
    assert all(-90 <= c.lat <= 90 and -180 <= c.lon <= 180 for c in table)
    assert "GeoNames" in topo.CITIES.read_text().splitlines()[2]


def test_latency_is_great_circle_distance_in_fibre_times_inflation_plus_access() -> None:
    t = topo.Topology((topo._site("a", topo.city("London"), access_ms=1.0),
                       topo._site("b", topo.city("New York"), access_ms=2.0)))
    km = topo.distance_km(*t.sites)
    assert 5500 < km < 5620  # London to New York is about 5,570 km
    assert t.rtt_ms(*t.sites) == pytest.approx(2 * (km / 200 * 1.5 + 3.0))
    assert t.rtt_ms(t.sites[0], t.sites[0]) == 0


def test_generators_and_a_toml_file(tmp_path: pathlib.Path) -> None:
    t = topo.generate("continents:30:3", seed=4)
    assert len(t.sites) == 30 and len(t.values("continent")) == 3
    assert topo.generate("continents:30:3", seed=4) == t and topo.generate("continents:30:3", seed=5) != t
    assert set(topo.generate("region:EU:12").values("continent")) == {"EU"}
    g20 = topo.generate("g20")
    assert len(g20.sites) == 20 and len(g20.values("country")) == 20
    orgs = topo.generate("orgs:4:5", seed=1)
    assert len(orgs.sites) == 20 and len(orgs.values("org")) == 4
    assert all(len({s.city for s in orgs.sites if s.org == o}) == 5 for o in orgs.values("org"))
    f = tmp_path / "t.toml"
    f.write_text('inflation = 2.0\n[[custodian]]\nname = "z"\ncity = "Zurich"\norg = "a"\n'
                 '[[custodian]]\nname = "t"\ncountry = "JP"\nlat = 35.7\nlon = 139.7\naccess_ms = 4\n'
                 '[[rtt]]\na = "z"\nb = "t"\nms = 250\n')
    t = topo.resolve(str(f))
    assert [s.continent for s in t.sites] == ["EU", "AS"] and t.inflation == 2.0
    assert t.rtt_ms(*t.sites) == 250.0
    for bad, why in (('[[custodian]]\nname = "x"\ncity = "Atlantis"\n', "not in the bundled table"),
                     ("inflation = 1\n", "no .{2}custodian"),
                     ('[[custodian]]\nname = "x"\ncity = "Zurich"\n[[rtt]]\na = "x"\nb = "y"\nms = 3\n', "not listed"),
                     ("[[custodian]\n", "not TOML")):
        f.write_text(bad)
        with pytest.raises(topo.TopologyError, match=why):
            topo.load(f)
    with pytest.raises(topo.TopologyError, match="unknown topology"):
        topo.resolve("ring:5")


def test_a_generator_with_an_access_delay_keeps_every_pair_50_ms_apart() -> None:
    plain, far = topo.generate("continents:40:5", seed=3), topo.generate("continents:40:5+access=12.5", seed=3)
    pairs = [(i, j) for i in range(40) for j in range(i + 1, 40)]
    assert min(plain.rtt_ms(plain.sites[i], plain.sites[j]) for i, j in pairs) < 50  # neighbours in one city
    assert min(far.rtt_ms(far.sites[i], far.sites[j]) for i, j in pairs) >= 50
    assert all(far.rtt_ms(far.sites[i], far.sites[j]) == pytest.approx(plain.rtt_ms(plain.sites[i], plain.sites[j]) + 50)
               for i, j in pairs)  # the same cities, 12.5 ms at each end, both ways
    for bad in ("continents:4:2+access=-1", "continents:4:2+access=x", "continents:4:2+delay=5", "g20+access="):
        with pytest.raises(topo.TopologyError, match=r"\+access=MS"):
            topo.generate(bad)


def test_independent_node_failures_match_the_binomial() -> None:
    t = topo.generate("continents:40:4", seed=2)
    got = sv.survive(t, "", threshold=3, shares=5, trials=400_000, failures={"node": 0.2}, seed=7)
    exact = sv.exact_independent(3, 5, 0.2)
    lo, hi = got.interval
    assert lo <= exact <= hi, (got.p, exact, got.interval)
    assert hi - lo < 0.004


def test_country_failures_are_independent_only_for_distinct_countries() -> None:
    t = topo.generate("orgs:1:40", seed=3)  # 40 sites over many countries, some shared
    kw = {"threshold": 2, "shares": 3, "trials": 200_000, "failures": {"country": 0.3}, "seed": 8}
    distinct = sv.survive(t, "distinct:country", **kw)
    lo, hi = distinct.interval
    assert lo <= sv.exact_independent(2, 3, 0.3) <= hi
    one = topo.Topology(tuple(topo._site(f"s{i}", topo.city(c)) for i, c in
                              enumerate(["Berlin", "Munich", "Hamburg", "Frankfurt"])))
    same = sv.survive(one, "", **kw)  # all in one country: it is up or down as one
    lo, hi = same.interval
    assert lo <= 0.7 <= hi
    with pytest.raises(topo.TopologyError, match="distinct:country"):
        sv.survive(one, "distinct:country", **kw)


def test_failure_specs_are_checked() -> None:
    assert sv.parse_failures("country:0.01, org:0.02,node:0.05") == {"country": 0.01, "org": 0.02, "node": 0.05}
    for bad in ("planet:0.1", "node:2", "node:x", "node:0.1,node:0.2", ""):
        with pytest.raises(ValueError):
            sv.parse_failures(bad)


def test_sim_survive_and_list_from_the_cli(tmp_path: pathlib.Path) -> None:
    import json

    from shardnet.simulations._local import run_cli

    r = run_cli("sim", "survive", "--topology", "continents:60:5", "--placement", "distinct:continent",
                "--placement", "", "-t", "3", "-n", "5", "--trials", "200000",
                "--fail", "continent:0.1,node:0.05", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    got = {x["placement"]: x for x in d["results"]}
    assert set(got) == {"distinct:continent", "random"} and d["topology"]["custodians"] == 60
    # Five holders in five continents each fail with 0.1 + 0.9 * 0.05: independent, so binomial.
    lo, hi = got["distinct:continent"]["ci95"]
    assert lo <= sv.exact_independent(3, 5, 1 - 0.9 * 0.95) <= hi
    assert got["random"]["survival"] < got["distinct:continent"]["survival"]  # shared continents fail together
    again = run_cli("sim", "survive", "--topology", "continents:60:5", "--placement", "distinct:continent",
                    "--placement", "", "-t", "3", "-n", "5", "--trials", "200000",
                    "--fail", "continent:0.1,node:0.05", "--seed", "3", "--json")
    assert [x["survived"] for x in json.loads(again.stdout)["results"]] == [x["survived"] for x in d["results"]]
    for bad, why in ((["--topology", "ring:4"], "unknown topology"), (["--fail", "moon:0.1"], "LEVEL:PROBABILITY"),
                     (["--placement", "distinct:planet"], "placement")):
        args = {"--topology": "g20", "--fail": "node:0.1", **dict(zip(bad[::2], bad[1::2], strict=True))}
        r = run_cli("sim", "survive", "-t", "2", "-n", "3", *[x for kv in args.items() for x in kv])
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("sim", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cities"] >= 100


def test_the_interval_counts_the_spread_between_the_placements_sampled() -> None:
    # Three of six sites, in two countries of three: a random placement is all in one country
    # with probability 2/20 (up with 0.7), else split (up unless both fail: 0.91); 1 of 3 needed.
    six = topo.Topology(tuple(topo._site(f"s{i}", topo.city(c)) for i, c in
                              enumerate(["Berlin", "Munich", "Hamburg", "Paris", "Lyon", "Marseille"])))
    exact = 0.1 * 0.7 + 0.9 * 0.91
    covered = wilson_only = 0
    for seed in range(30):
        got = sv.survive(six, "", threshold=1, shares=3, trials=20_000, failures={"country": 0.3}, seed=seed,
                         placements=20)
        lo, hi = got.interval
        covered += lo <= exact <= hi
        wlo, whi = sv.wilson(got.survived, got.trials)
        wilson_only += wlo <= exact <= whi
    assert covered >= 24, covered  # about 95% of 30
    assert wilson_only < covered  # trials alone understate it: 20 placements, not 20,000 draws


def test_wilson_interval_known_values() -> None:
    lo, hi = sv.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = sv.wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    assert sv.wilson(10, 10)[1] == 1.0


def test_sites_without_an_org_fail_alone() -> None:
    t = topo.Topology(tuple(topo._site(f"s{i}", topo.city(c)) for i, c in
                            enumerate(["Berlin", "Paris", "Rome", "Madrid", "Vienna"])))
    got = sv.survive(t, "", threshold=3, shares=5, trials=200_000, failures={"org": 0.3}, seed=1)
    lo, hi = got.interval
    assert lo <= sv.exact_independent(3, 5, 0.3) <= hi
