"""The scenario API: one seeded function, run the same way in every mode.

A :class:`Scenario` is a name, a default topology and size, default
parameters and an async ``body(run)``. The body works on ``run.cluster`` (a
:class:`~shardnet.simulations._cluster.Cluster`: import, reconstruct, crash,
partition, revoke, watch a record spread) and writes down what it saw:

* ``run.measure(kind, seconds, bound, **labels)``: a measured delay next to
  its physical bound (see ``_cluster``); ``run.reconstruction(got, **labels)``
  for a reconstruction, with the CPU time spent meanwhile;
* ``run.outcome(name, ok, detail)``: a fact the scenario checks, e.g. "the
  key came back with n-t custodians down";
* ``run.series(name, points)``: a curve, e.g. the nodes a revocation has
  reached over time;
* ``run.mark(i, role=..., state=...)``: what a node is, for the world map.

:func:`run_scenario` builds the topology and the mode's cluster, runs the
body (under trio's MockClock in ``virtual`` mode) and returns one JSON-ready
record of everything, with the seed, the versions and the command line, so
that a run can be made again. Everything the body draws comes from
``run.rng``, seeded; in ``virtual`` mode with the CPU model off the same seed
gives the same record, timings included.
"""

from __future__ import annotations

import importlib.metadata
import math
import pathlib
import platform
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from ._cluster import Cluster, Reconstruction
from ._topology import Topology, resolve, summary

MODES = ("virtual", "inprocess", "multiprocess")
Progress = Callable[[str, int, int], None]  # (phase, done, total)
ZERO_OK = ("offline", "liars", "extra_ms", "double_voters", "forgers")  # the numeric parameters that may be 0; the others are above 0
#: The figures :func:`summarise` adds to a group's labels (the rest of a summary row names the group).
STATISTICS = ("count", "missing", "median_s", "max_s", "median_bound_s", "median_ratio", "median_cpu_s")
ROLE_RANK = {"custodian": 0, "holder": 1, "owner": 2, "requester": 2, "revoked": 3, "liar": 3}


class ScenarioError(ValueError):
    """A scenario cannot run as asked (an unknown parameter, a topology too small)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    body: Callable[[Run], Awaitable[None]]
    topology: str = "continents:{nodes}:5"  # a generator or file; {nodes} is the run's size
    nodes: int = 20
    params: dict[str, Any] = field(default_factory=dict)  # defaults; their types parse --param
    modes: tuple[str, ...] = MODES  # where it can run
    autopilot: bool = False  # the nodes run the epoch actions triggers call for (off: the body drives them)


@dataclass
class Measurement:
    kind: str
    seconds: float | None  # None: it never happened (within the scenario's wait)
    bound: float | None
    labels: dict[str, Any]
    cpu_s: float | None = None  # this process's CPU time while it happened (see Run.reconstruction)

    @property
    def ratio(self) -> float | None:
        if self.seconds is None or not self.bound or math.isnan(self.bound):
            return None
        return self.seconds / self.bound

    def to_json(self) -> dict[str, Any]:
        bound = None if self.bound is None or math.isnan(self.bound) else round(self.bound, 6)
        ratio = self.ratio
        out = {"kind": self.kind, "seconds": None if self.seconds is None else round(self.seconds, 6),
               "bound_s": bound, "ratio": None if ratio is None else round(ratio, 4), **self.labels}
        if self.cpu_s is not None:
            out["cpu_s"] = round(self.cpu_s, 6)
        return out


class Run:
    """What a scenario's body gets: the cluster, its seeded RNG, its parameters, and
    the places to write what it saw."""

    def __init__(self, cluster: Cluster, *, seed: int, params: dict[str, Any], progress: Progress) -> None:
        self.cluster = cluster
        self.seed = seed
        self.params = params
        self.rng = random.Random(seed)
        self.progress = progress
        self.measurements: list[Measurement] = []
        self.outcomes: list[dict[str, Any]] = []
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.roles: dict[int, str] = {}
        self.states: dict[int, str] = {}

    @property
    def topology(self) -> Topology:
        return self.cluster.topology

    def measure(self, kind: str, seconds: float | None, bound: float | None, **labels: Any) -> None:
        self.measurements.append(Measurement(kind, seconds, bound, labels))

    def reconstruction(self, got: Reconstruction, **labels: Any) -> None:
        """A reconstruction's latency (None if it failed), its bound, and the CPU time this
        process spent meanwhile: in ``inprocess`` mode every node shares one process, so
        a latency well above its bound next to a CPU time close to it says the run was
        CPU-bound, not the network slow."""
        self.measurements.append(Measurement("reconstruction", got.seconds if got.ok else None, got.bound, labels,
                                             got.cpu_s))

    def outcome(self, name: str, ok: bool, detail: str = "") -> None:
        self.outcomes.append({"name": name, "ok": bool(ok), "detail": detail})

    def series(self, name: str, points: list[tuple[float, float]]) -> None:
        self.curves[name] = points

    def mark(self, i: int, *, role: str | None = None, state: str | None = None) -> None:
        """A node's role (a role never gives way to a plainer one: an owner that also holds
        a shard stays an owner) and its latest state."""
        if role is not None and ROLE_RANK.get(role, 1) >= ROLE_RANK.get(self.roles.get(i, "custodian"), 1):
            self.roles[i] = role
        if state is not None:
            self.states[i] = state


def parse_params(scenario: Scenario, given: list[str]) -> dict[str, Any]:
    """The scenario's defaults with ``NAME=VALUE`` overrides, typed as the defaults are."""
    out = dict(scenario.params)
    for item in given:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in scenario.params:
            known = ", ".join(sorted(scenario.params)) or "none"
            raise ScenarioError(f"--param {item!r}: {scenario.name} takes NAME=VALUE with NAME one of {known}")
        kind = type(scenario.params[name])
        try:
            out[name] = kind(value)
        except ValueError:
            raise ScenarioError(f"--param {item!r}: {name} takes a {kind.__name__} value") from None
        if kind in (int, float):
            zero_ok = name in ZERO_OK
            if not ((out[name] >= 0 if zero_ok else out[name] > 0) and out[name] < 10**6):  # NaN fails too
                raise ScenarioError(f"--param {item!r}: {name} is a number from {0 if zero_ok else 'above 0'} "
                                    f"to below 1000000")
    return out


def _versions() -> dict[str, str]:
    got = {"python": platform.python_version()}
    for dist in ("shardnet", "libp2p", "trio", "cryptography", "numpy"):
        try:
            got[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            got[dist] = "not installed"
    return got


def _cluster(mode: str, root: pathlib.Path, topology: Topology, seed: int, cpu_model: bool,
             autopilot: bool) -> Cluster:
    if mode == "virtual":
        from ._virtual import VirtualCluster

        return VirtualCluster(root, topology, seed=seed, cpu_model=cpu_model, autopilot=autopilot)
    if mode == "inprocess":
        from ._inprocess import InprocessCluster

        return InprocessCluster(root, topology, seed=seed, autopilot=autopilot)
    from ._netns import unavailable

    why = unavailable()
    if why is not None:
        raise ScenarioError(f"--mode multiprocess: {why}; use --mode inprocess or virtual here")
    from ._multiprocess import MultiprocessCluster

    return MultiprocessCluster(root, topology, seed=seed, autopilot=autopilot)


def summarise(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind and label set: count, medians of seconds, bound and ratio, and misses."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for m in measurements:
        labels = tuple(sorted((k, v) for k, v in m.items()
                              if k not in ("seconds", "bound_s", "ratio", "node", "cpu_s")))
        groups.setdefault(labels, []).append(m)
    rows = []
    for labels, ms in groups.items():
        got = [m["seconds"] for m in ms if m["seconds"] is not None]
        ratios = [m["ratio"] for m in ms if m["ratio"] is not None]
        bounds = [m["bound_s"] for m in ms if m["bound_s"] is not None]
        cpu = [m["cpu_s"] for m in ms if m.get("cpu_s") is not None]
        row = {**dict(labels), "count": len(ms), "missing": len(ms) - len(got),
               "median_s": round(statistics.median(got), 6) if got else None,
               "max_s": round(max(got), 6) if got else None,
               "median_bound_s": round(statistics.median(bounds), 6) if bounds else None,
               "median_ratio": round(statistics.median(ratios), 4) if ratios else None}
        if cpu:
            row["median_cpu_s"] = round(statistics.median(cpu), 6)
        rows.append(row)
    return rows


def run_scenario(scenario: Scenario, *, mode: str = "virtual", nodes: int | None = None, seed: int = 1,
                 topology: str | None = None, params: dict[str, Any] | None = None, cpu_model: bool = True,
                 command: list[str] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``scenario`` once; the record of the run (see the module docstring)."""
    if mode not in MODES:
        raise ScenarioError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    if mode not in scenario.modes:
        raise ScenarioError(f"{scenario.name} runs in {' or '.join(scenario.modes)} mode, not {mode}")
    size = nodes or scenario.nodes
    ref = (topology or scenario.topology).replace("{nodes}", str(size))
    topo = resolve(ref, seed=seed)
    if nodes is not None and len(topo.sites) != nodes:
        raise ScenarioError(f"--nodes {nodes}, but the topology {ref} has {len(topo.sites)} custodians")
    args = dict(scenario.params) if params is None else params
    say = progress or (lambda phase, done, total: None)
    holder: dict[str, Run] = {}
    w0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"shardnet-sim-{scenario.name}-") as root:
        say("homes", 0, len(topo.sites))
        cluster = _cluster(mode, pathlib.Path(root), topo, seed, cpu_model, scenario.autopilot)
        say("homes", len(topo.sites), len(topo.sites))
        run = holder["run"] = Run(cluster, seed=seed, params=args, progress=say)

        async def main() -> float:
            async with cluster.running():
                say("directory", 0, 1)
                await cluster.settle()
                say("directory", 1, 1)
                v0 = trio.current_time()
                await scenario.body(run)
                return trio.current_time() - v0

        try:
            if mode == "virtual":
                scenario_s = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
            else:
                scenario_s = trio.run(main)
        except BaseExceptionGroup as group:  # trio's nurseries wrap a lone error: raise it as itself
            raise _leaf(group) from None
    measurements = [m.to_json() for m in run.measurements]
    sites = [{"name": s.name, "city": s.city, "country": s.country, "continent": s.continent, "lat": s.lat,
              "lon": s.lon, "org": s.org, "role": run.roles.get(i, "custodian"), "state": run.states.get(i, "up")}
             for i, s in enumerate(topo.sites)]
    return {
        "scenario": scenario.name, "mode": mode, "seed": seed, "nodes": len(topo.sites),
        "cpu_model": cpu_model if mode == "virtual" else None, "topology": summary(topo), "params": args,
        "command": command or [], "versions": _versions(),
        "outcomes": run.outcomes, "ok": all(o["ok"] for o in run.outcomes),
        "summary": summarise(measurements), "measurements": measurements,
        "series": {k: [[round(t, 6), v] for t, v in pts] for k, pts in run.curves.items()},
        "sites": sites, "logged": cluster.logged(), "scenario_s": round(scenario_s, 3),
        "wall_s": round(time.perf_counter() - w0, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **({} if cluster.nodes_peak_rss_mib is None else {"nodes_peak_rss_mib": round(cluster.nodes_peak_rss_mib, 1)}),
    }


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def format_summary(record: dict[str, Any]) -> str:
    clock = "virtual" if record["mode"] == "virtual" else "wall"
    lines = [f"{record['scenario']} ({record['mode']}, {record['nodes']} nodes over "
             f"{len(record['topology']['continents'])} continents, seed {record['seed']}): "
             f"scenario {record['scenario_s']:.1f} s ({clock} clock), run {record['wall_s']:.1f} s wall, peak RSS "
             f"{record['peak_rss_mib']:.0f} MiB"
             + (f", node processes {record['nodes_peak_rss_mib']:.0f} MiB together" if "nodes_peak_rss_mib" in record
                else "")]
    rows = record["summary"]
    if rows:
        keys = sorted({k for r in rows for k in r} - {"kind", *STATISTICS})
        cpu = any("median_cpu_s" in r for r in rows)
        head = ["kind", *keys, "count", "missed", "median s", "max s", "bound s", "ratio", *(["cpu s"] if cpu else [])]
        table = [[str(r.get("kind")), *[str(r.get(k, "")) for k in keys], str(r["count"]), str(r["missing"]),
                  _f(r["median_s"]), _f(r["max_s"]), _f(r["median_bound_s"]), _f(r["median_ratio"], 2),
                  *([_f(r.get("median_cpu_s"))] if cpu else [])]
                 for r in rows]
        widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    for o in record["outcomes"]:
        lines.append(f"{'ok  ' if o['ok'] else 'FAIL'} {o['name']}" + (f": {o['detail']}" if o["detail"] else ""))
    return "\n".join(lines)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
