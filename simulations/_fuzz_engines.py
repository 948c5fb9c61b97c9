"""Where the fuzz campaign's inputs come from, and what they reached.

Three engines make inputs from a target's seeds (real encodings):

- ``mutation`` (the default): seeded byte mutations (bits flipped, bytes inserted, cut,
  spliced from another seed or repeated, msgpack length headers blown up), structural ones (a
  seed decoded as msgpack, one value deep inside it replaced by another of the wrong
  type or range, a map's keys mixed, and packed again, so that the input is valid
  msgpack that the record's own checks must refuse), and now and then random bytes;
- ``hypothesis``: Hypothesis's strategies (raw bytes, msgpack of random structures, a
  seed with edits), drawn without feedback: Hypothesis here is a generator of inputs;
- ``atheris``: libFuzzer, coverage-guided, in a process of its own
  (:mod:`._fuzz_atheris`), for the decoders.

:class:`Reach` measures what inputs reached, with coverage.py in branch mode: the lines
and arcs executed while they were parsed (what ran at import is not counted), so that
engines can be compared on the same targets.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAX_INPUT = 96 * 1024
ENGINES = ("mutation", "hypothesis", "atheris")

#: msgpack headers worth writing on their own: lengths, nil, big ints.
_INTERESTING = (0x00, 0x7F, 0x80, 0xC0, 0xC4, 0xC5, 0xC6, 0xCF, 0xD3, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF)


def mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> bytes:
    """One seeded byte-level mutation of ``seed``."""
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(8)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip bits
            i = min(at, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert bytes
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 2 and data:  # cut
            del data[at:at + rng.randrange(1, 33)]
        elif op == 3 and others:  # splice from another seed
            other = rng.choice(others)
            j = rng.randrange(len(other) + 1)
            data[at:] = other[j:j + rng.randrange(1, 257)]
        elif op == 4 and data:  # an interesting byte
            i = min(at, len(data) - 1)
            data[i] = rng.choice(_INTERESTING)
        elif op == 5:  # a 32-bit length, huge
            data[at:at] = bytes((rng.choice((0xC6, 0xDB, 0xDD, 0xDF)),)) + b"\xff\xff\xff\xf0"
        elif op == 6:  # a few bytes repeated: deep nesting ("((((", msgpack's 0x91 0x91 ...)
            chunk = bytes(data[at:at + rng.randrange(1, 5)]) or b"\x91"
            data[at:at] = chunk * rng.choice((2, 8, 40, 200))
        else:  # truncate
            del data[at:]
    return bytes(data[:MAX_INPUT])


def _odd_value(rng: random.Random, old: Any) -> Any:
    """A value of the wrong type or range for where ``old`` stood."""
    choices: list[Any] = [
        None, True, -1, 0, 2, 255, 1 << 32, (1 << 64) - 1, -(1 << 63), 1.5, "", "x" * 300, b"", bytes(33),
        [], [old, old], {}, {"a": 1, b"b": 2},  # a map whose keys cannot be sorted: not canonical
        {"k": old}, _nested(40),  # deeper than any record may nest
    ]
    if isinstance(old, int) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old + 1]  # a version or a count off by one, most often
    if isinstance(old, str):
        choices += [old.upper(), old + "\x00", old[:-1]]
    if isinstance(old, bytes):
        choices += [old[:-1], old + b"\x00", bytes(len(old))]
    return rng.choice(choices)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _edit(rng: random.Random, value: Any, depth: int) -> Any:
    """``value`` with one element, at a random depth, replaced by an odd value."""
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], _edit(rng, value[i], depth + 1), *value[i + 1:]]
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.7:
        k = rng.choice(list(value))
        return {**value, k: _edit(rng, value[k], depth + 1)}
    if isinstance(value, bytes) and depth < 6 and rng.random() < 0.6:
        inner = _unpack(value)  # a signed body inside its envelope, say
        if inner is not None:
            return _pack(_edit(rng, inner, depth + 1)) or value
    return _odd_value(rng, value)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not msgpack: no structure to edit
        return None


def _pack(value: Any) -> bytes | None:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except Exception:  # noqa: BLE001 - an edit msgpack cannot write
        return None
    return packed


def restructure(rng: random.Random, seed: bytes) -> bytes | None:
    """``seed`` decoded, one value inside it made odd, and packed again (None when the seed
    is not msgpack)."""
    value = _unpack(seed)
    if value is None and seed[:1] != b"\xc0":
        return None
    return _pack(_edit(rng, value, 0))


def mutation_inputs(rng: random.Random, seeds: list[bytes], n: int) -> Iterator[bytes]:
    """The ``mutation`` engine: ``n`` inputs, one in 50 random bytes, one in 5 structural."""
    for k in range(n):
        if k % 50 == 49 or not seeds:
            yield rng.randbytes(rng.randrange(0, 512))
            continue
        seed = rng.choice(seeds)
        if k % 5 == 2:
            edited = restructure(rng, seed)
            if edited is not None:
                yield edited[:MAX_INPUT]
                continue
        yield mutate(rng, seed, seeds)


def hypothesis_inputs(seed: int, seeds: list[bytes], n: int) -> list[bytes]:
    """The ``hypothesis`` engine: ``n`` inputs drawn from Hypothesis's strategies (fewer
    when it runs out of distinct ones)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
                        st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=64))
    structures = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=8), st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)),
                                                     inner, max_size=6)), max_leaves=24)
    edits = st.lists(st.tuples(st.sampled_from(("set", "insert", "cut", "truncate")), st.integers(0, 1 << 16),
                               st.binary(min_size=1, max_size=8)), min_size=1, max_size=8)
    strategies: list[st.SearchStrategy[bytes]] = [st.binary(max_size=512),
                                                  structures.map(lambda v: _pack(v) or b"")]
    if seeds:
        strategies.append(st.tuples(st.sampled_from(seeds), edits).map(lambda se: _apply(*se)))
    drawn: list[bytes] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(strategies))
    def draw(data: bytes) -> None:
        drawn.append(data[:MAX_INPUT])

    draw()
    return drawn


def _apply(seed: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, at, chunk in edits:
        at %= len(data) + 1
        if op == "set" and data:
            data[min(at, len(data) - 1)] = chunk[0]
        elif op == "insert":
            data[at:at] = chunk
        elif op == "cut":
            del data[at:at + len(chunk) * 4]
        else:
            del data[at:]
    return bytes(data)


def _in_chunks(seed: int, seeds: list[bytes], n: int, chunk: int = 5000) -> Iterator[bytes]:
    """Hypothesis's inputs, drawn a chunk at a time (each chunk its own seed), so that
    100k of them are never held at once."""
    for k in range(0, n, chunk):
        yield from hypothesis_inputs(seed + k, seeds, min(chunk, n - k))


def inputs(engine: str, key: str, seeds: list[bytes], n: int) -> Iterable[bytes]:
    """``n`` inputs for one target (``key`` seeds its random choices)."""
    if n <= 0:
        return []
    if engine == "mutation":
        return mutation_inputs(random.Random(key), seeds, n)
    if engine == "hypothesis":
        return _in_chunks(random.Random(key).randrange(1 << 32), seeds, n)
    raise ValueError(f"the {engine} engine does not make inputs in this process")


@dataclass
class Reach:
    """The lines and arcs of ``packages`` executed inside ``with reach:`` (coverage.py,
    branch mode), as ``(file, line)`` and ``(file, from, to)`` with files relative to the
    package root. A Reach that is not ``on`` measures nothing and costs nothing."""

    packages: tuple[str, ...]
    on: bool = True
    lines: set[tuple[str, int]] = field(default_factory=set)
    arcs: set[tuple[str, int, int]] = field(default_factory=set)
    _cov: Any = None

    def __enter__(self) -> Reach:
        if self.on:
            import coverage

            self._cov = coverage.Coverage(branch=True, source_pkgs=list(self.packages), data_file=None,
                                          config_file=False)
            # The decoders were imported before: what ran at import is not what inputs reached.
            self._cov.set_option("run:disable_warnings", ["module-not-measured", "no-data-collected"])
            self._cov.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cov is None:
            return
        self._cov.stop()
        data = self._cov.get_data()
        for path in data.measured_files():
            name = _short(path)
            self.lines |= {(name, n) for n in data.lines(path) or ()}
            self.arcs |= {(name, a, b) for a, b in data.arcs(path) or ()}
        self._cov = None


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for root in ("protocol", "node", "simulations"):
        if root in parts:
            i = len(parts) - 1 - parts[::-1].index(root)
            return "/".join(parts[i:])
    return path


def compare(reached: dict[str, tuple[set[Any], set[Any]]]) -> dict[str, Any]:
    """Engines side by side: each one's lines and arcs, the union, and what each alone
    reached (``reached``: engine -> (lines, arcs))."""
    all_lines = set().union(*(ln for ln, _ in reached.values())) if reached else set()
    all_arcs = set().union(*(a for _, a in reached.values())) if reached else set()
    out: dict[str, Any] = {"union_lines": len(all_lines), "union_arcs": len(all_arcs), "engines": {}}
    for engine, (lines, arcs) in reached.items():
        others_l = set().union(*(ln for e, (ln, _) in reached.items() if e != engine))
        others_a = set().union(*(a for e, (_, a) in reached.items() if e != engine))
        out["engines"][engine] = {
            "lines": len(lines), "arcs": len(arcs),
            "only_lines": sorted(f"{f}:{n}" for f, n in lines - others_l),
            "only_arcs": sorted(f"{f}:{a}->{b}" for f, a, b in arcs - others_a),
        }
    return out

