"""Geographic topologies for the simulation harness: custodians placed in real cities.

A topology is a list of :class:`Site` (a custodian's name, city, country,
continent, coordinates, org and one-way access delay) and optional explicit
round-trip times between pairs. Without one, a pair's round trip is twice the
one-way delay: the great-circle distance at the speed of light in fibre
(:data:`FIBRE_KM_PER_S`) times a route-inflation factor, plus both ends' access
delays.

A topology comes from a TOML file (:func:`load`) or from a generator spec
(:func:`generate`), one of :data:`GENERATORS`:

* ``continents:N:K``: N custodians over K continents, round-robin;
* ``region:CONT:N``: N custodians all in one continent (EU, AS, NA, ...);
* ``g20``: one custodian per G20 member (the EU's in Brussels);
* ``orgs:K:M``: K orgs with M sites each, the sites of one org in different cities.

Any generator may end in ``+access=MS``: every custodian's one-way access delay
(a last mile, a data centre's ingress). With 12.5 ms, no two custodians are
under 50 ms apart, however close their cities.

The TOML file::

    inflation = 1.5                 # optional, the route-inflation factor
    [[custodian]]
    name = "zrh-1"
    city = "Zurich"                 # lat/lon/country/continent from the city table if left out
    org = "bank-a"
    access_ms = 2.0                 # optional, one way
    [[rtt]]                         # optional, explicit round trips
    a = "zrh-1"
    b = "nyc-1"
    ms = 95.0

The city table (``data/cities.csv``) names its source.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import pathlib
import random
import tomllib
from dataclasses import dataclass, field

from shardnet.protocol import continent_of, placement

#: The speed of light in optical fibre, km/s (about two thirds of c).
FIBRE_KM_PER_S = 200_000.0
DEFAULT_INFLATION = 1.5
EARTH_RADIUS_KM = 6371.0
CITIES = pathlib.Path(__file__).with_name("data") / "cities.csv"
GENERATORS = ("continents:N:K", "region:CONT:N", "g20", "orgs:K:M")
#: A G20 member's city in the table (the EU's: Brussels).
G20 = {"AR": "Buenos Aires", "AU": "Sydney", "BR": "Sao Paulo", "CA": "Toronto", "CN": "Shanghai",
       "FR": "Paris", "DE": "Frankfurt", "IN": "Mumbai", "ID": "Jakarta", "IT": "Milan", "JP": "Tokyo",
       "KR": "Seoul", "MX": "Mexico City", "RU": "Moscow", "SA": "Riyadh", "ZA": "Johannesburg",
       "TR": "Istanbul", "GB": "London", "US": "New York", "BE": "Brussels"}
MAX_SITES = 100_000


class TopologyError(ValueError):
    """A topology file or spec that cannot be used (one line, for the CLI)."""


@dataclass(frozen=True)
class City:
    name: str
    country: str
    continent: str
    lat: float
    lon: float


@functools.cache
def cities() -> tuple[City, ...]:
    """The bundled city table."""
    with CITIES.open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return tuple(City(r["name"], r["country"], r["continent"], float(r["lat"]), float(r["lon"])) for r in rows)


def city(name: str) -> City:
    for c in cities():
        if c.name.lower() == name.strip().lower():
            return c
    raise TopologyError(f"city {name!r} is not in the bundled table (give lat and lon)")


@dataclass(frozen=True)
class Site:
    name: str
    city: str
    country: str
    continent: str
    lat: float
    lon: float
    org: str = ""
    access_ms: float = 0.0

    def candidate(self) -> placement.Candidate:
        """What the placement solver sees of it (the name stands for the peer id)."""
        return placement.Candidate(self.name, self.country, self.continent, self.org, self.city)


def distance_km(a: Site, b: Site) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class Topology:
    sites: tuple[Site, ...]
    inflation: float = DEFAULT_INFLATION
    rtts: dict[frozenset[str], float] = field(default_factory=dict)  # explicit, ms
    source: str = ""

    def __post_init__(self) -> None:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise TopologyError("two custodians have one name")
        if not self.sites:
            raise TopologyError("a topology needs at least one custodian")

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise TopologyError(f"no custodian {name!r} in the topology")

    def rtt_ms(self, a: Site, b: Site) -> float:
        """A pair's round trip: explicit, or from distance and access delays (0 to oneself)."""
        if a.name == b.name:
            return 0.0
        given = self.rtts.get(frozenset((a.name, b.name)))
        if given is not None:
            return given
        one_way = distance_km(a, b) / FIBRE_KM_PER_S * 1000 * self.inflation + a.access_ms + b.access_ms
        return 2 * one_way

    def one_way_s(self, a: Site, b: Site) -> float:
        return self.rtt_ms(a, b) / 2000

    def values(self, attr: str) -> list[str]:
        return sorted({str(getattr(s, attr)) for s in self.sites})


def _site(name: str, c: City, org: str = "", access_ms: float = 0.0) -> Site:
    return Site(name, c.name, c.country, c.continent, c.lat, c.lon, org, access_ms)


def load(path: pathlib.Path) -> Topology:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: not TOML: {exc}") from None
    rows = data.get("custodian")
    if not isinstance(rows, list) or not rows:
        raise TopologyError(f"{path}: no [[custodian]] entries")
    if len(rows) > MAX_SITES:
        raise TopologyError(f"{path}: over {MAX_SITES} custodians")
    sites = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"]:
            raise TopologyError(f"{path}: custodian {i + 1} has no name")
        try:
            known = city(r["city"]) if "lat" not in r or "lon" not in r else None
            country = str(r.get("country") or (known.country if known else "")).upper()
            lat, lon = (float(r["lat"]), float(r["lon"])) if known is None else (known.lat, known.lon)
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise TopologyError(f"custodian {r['name']!r}: latitude or longitude out of range")
            access = float(r.get("access_ms", 0.0))
            if not 0 <= access < 10_000:
                raise TopologyError(f"custodian {r['name']!r}: access_ms must be 0 to 10000")
            sites.append(Site(r["name"], str(r.get("city", "")), country,
                              str(r.get("continent") or continent_of(country)), lat, lon, str(r.get("org", "")),
                              access))
        except KeyError as exc:
            raise TopologyError(f"{path}: custodian {r['name']!r} needs {exc.args[0]} (or a known city)") from None
        except (TypeError, ValueError) as exc:
            raise TopologyError(f"{path}: custodian {r['name']!r}: {exc}") from None
    names = {s.name for s in sites}
    rtts: dict[frozenset[str], float] = {}
    for r in data.get("rtt", []):
        if not isinstance(r, dict) or r.get("a") not in names or r.get("b") not in names:
            raise TopologyError(f"{path}: an [[rtt]] entry names a custodian that is not listed")
        ms = r.get("ms")
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not 0 < ms < 100_000:
            raise TopologyError(f"{path}: [[rtt]] {r['a']}-{r['b']}: ms must be a positive number")
        rtts[frozenset((r["a"], r["b"]))] = float(ms)
    inflation = data.get("inflation", DEFAULT_INFLATION)
    if not isinstance(inflation, (int, float)) or isinstance(inflation, bool) or not 1 <= inflation <= 10:
        raise TopologyError(f"{path}: inflation must be a number from 1 to 10")
    return Topology(tuple(sites), float(inflation), rtts, source=str(path))


def _ints(parts: list[str], spec: str, count: int) -> list[int]:
    if len(parts) != count or not all(x.isdigit() and int(x) > 0 for x in parts):
        raise TopologyError(f"{spec!r}: expected {count} positive numbers after the generator's name")
    return [int(x) for x in parts]


def _cap(spec: str, sites: int) -> None:
    """Refuse a generator over :data:`MAX_SITES` before anything is built."""
    if sites > MAX_SITES:
        raise TopologyError(f"{spec!r}: over {MAX_SITES} custodians")


def generate(spec: str, *, seed: int = 0, inflation: float = DEFAULT_INFLATION) -> Topology:
    """A topology from a generator spec (:data:`GENERATORS`, ``+access=MS`` optional), the same
    for the same seed."""
    main, plus, extra = spec.strip().partition("+")
    access = _access(spec, extra) if plus else 0.0
    kind, *parts = main.split(":")
    rng = random.Random(seed)
    table = list(cities())
    sites: list[Site] = []
    if kind == "continents":
        n, k = _ints(parts, spec, 2)
        _cap(spec, n)
        conts = sorted({c.continent for c in table})
        if k > len(conts):
            raise TopologyError(f"{spec!r}: the city table spans {len(conts)} continents")
        picked = rng.sample(conts, k)
        by = {cont: [c for c in table if c.continent == cont] for cont in picked}
        for i in range(n):
            cont = picked[i % k]
            sites.append(_site(f"c{i:04d}", rng.choice(by[cont]), org=f"org-{i:04d}"))
    elif kind == "region":
        if len(parts) != 2:
            raise TopologyError(f"{spec!r}: expected region:CONT:N")
        cont = parts[0].upper()
        (n,) = _ints(parts[1:], spec, 1)
        _cap(spec, n)
        pool = [c for c in table if c.continent == cont]
        if not pool:
            raise TopologyError(f"{spec!r}: no city of continent {cont} (AF, AS, EU, NA, OC, SA)")
        sites = [_site(f"c{i:04d}", rng.choice(pool), org=f"org-{i:04d}") for i in range(n)]
    elif kind == "g20":
        if parts:
            raise TopologyError(f"{spec!r}: g20 takes no numbers")
        sites = [_site(f"g20-{cc.lower()}", city(name), org=f"org-{cc.lower()}") for cc, name in sorted(G20.items())]
    elif kind == "orgs":
        k, m = _ints(parts, spec, 2)
        _cap(spec, k * m)
        if m > len(table):
            raise TopologyError(f"{spec!r}: at most {len(table)} sites per org")
        for o in range(k):
            for j, c in enumerate(rng.sample(table, m)):
                sites.append(_site(f"o{o:03d}-s{j:03d}", c, org=f"org-{o:03d}"))
    else:
        raise TopologyError(f"unknown topology {spec!r}: a TOML file or one of {', '.join(GENERATORS)}")
    if access:
        sites = [dataclasses.replace(s, access_ms=access) for s in sites]
    return Topology(tuple(sites), inflation, source=spec)


def _access(spec: str, extra: str) -> float:
    key, _, value = extra.partition("=")
    try:
        ms = float(value) if key.strip() == "access" else -1.0
    except ValueError:
        ms = -1.0
    if not 0 <= ms < 10_000:
        raise TopologyError(f"{spec!r}: a generator may end in +access=MS, a one-way delay of 0 to 10000 ms")
    return ms


def resolve(ref: str, *, seed: int = 0) -> Topology:
    """A TOML file's path, or a generator spec."""
    path = pathlib.Path(ref)
    if path.suffix == ".toml" or path.exists():
        return load(path)
    return generate(ref, seed=seed)


def summary(t: Topology) -> dict[str, object]:
    return {"source": t.source, "custodians": len(t.sites), "countries": len(t.values("country")),
            "continents": t.values("continent"), "orgs": len(t.values("org")), "inflation": t.inflation}
