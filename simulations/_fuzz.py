"""The fuzz campaign (``shardnet bench fuzz``): every decoder and every stream handler's
parse path, fed mutations of real inputs.

Seeds are real: records made with the protocol's own constructors, and the frames each
stream protocol carried while a small grid imported a key, reconstructed it and refreshed
it (the memory network's tap). Each input is a seeded mutation of a seed (bits flipped,
bytes inserted, cut or spliced from another seed, lengths blown up) or, now and then,
random bytes. A decoder may refuse an input only with the errors it documents
(``ShardnetError``, ``ValueError``); a handler only with ``RequestRejected`` (what becomes
a refusal on the wire). Anything else is a finding: it is printed, and its input kept
under ``--corpus`` (one file per input, named by its hash) so that a test replays it.

Runs in one process, in virtual time (the grid), with no network.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node import _transport as tx

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fuzz-corpus"
MAX_INPUT = 96 * 1024


@dataclass
class Finding:
    target: str
    error: str
    data: bytes = field(repr=False)


@dataclass
class Outcome:
    target: str
    inputs: int = 0
    refused: int = 0  # inputs refused with a documented error (the expected case)
    findings: list[Finding] = field(default_factory=list)


def _finding(target: str, exc: BaseException, data: bytes) -> Finding:
    return Finding(target, f"{type(exc).__name__}: {exc}"[:300], data)


def mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> bytes:
    """One seeded mutation of ``seed``."""
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(7)
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
        elif op == 4 and data:  # an interesting byte: msgpack length headers, nil, big ints
            i = min(at, len(data) - 1)
            data[i] = rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xC4, 0xC5, 0xC6, 0xCF, 0xD3, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF))
        elif op == 5:  # a 32-bit length, huge
            data[at:at] = bytes((rng.choice((0xC6, 0xDB, 0xDD, 0xDF)),)) + b"\xff\xff\xff\xf0"
        else:  # truncate
            del data[at:]
    return bytes(data[:MAX_INPUT])


def _inputs(rng: random.Random, seeds: list[bytes], n: int) -> list[bytes]:
    out = []
    for k in range(n):
        if k % 50 == 49 or not seeds:
            out.append(rng.randbytes(rng.randrange(0, 512)))
        else:
            out.append(mutate(rng, rng.choice(seeds), seeds))
    return out


# -- decoders (protocol/, no IO) ----------------------------------------------------------


def _records() -> dict[str, tuple[list[bytes], Callable[[bytes], Any]]]:
    """Each decoder with real encodings to start from."""
    rng = random.Random(1)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    me = p.peer_id_of(key.public_key().public_bytes_raw())
    keyset, shares = p.split_key(b"fuzz master key", 2, 3, owner=key, now=1_800_000_000,
                                 attrs={"holders": {"1": [me], "2": [me], "3": [me]}}, rng=rng.randbytes)
    eph = p.HpkePrivateKey.generate("x25519", rng.randbytes)
    req = p.Request.make(key, keyset_id=keyset.keyset_id, mode="unwrap", reason="fuzz", ephemeral=eph.public_bytes(),
                         nonce=bytes(16), created=1_800_000_000, not_after=1_800_000_300)
    vote = p.Vote.make(key, req, "approve", 1_800_000_001)
    partial = p.partial_decrypt(keyset, shares[0], req.id.encode(), rng=rng.randbytes)
    release = p.Release.make(key, req, epoch=0, index=1, payload=p.partial_payload(partial))
    receipt = p.Receipt.make(key, keyset_id=keyset.keyset_id, epoch=0, index=1, shard_digest=bytes(32),
                             delivery_digest=bytes(32), status="stored", reason="", time=1)
    no_shard = p.NoShard.make(key, req, epoch=0)
    hpke = p.HpkePrivateKey.generate("x25519", rng.randbytes)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, me, 1_800_000_000, None, keyset.policy_hash,
                       keyset.commitments_digest, "x25519")
    sealed = p.seal_shard(meta, shares[0], hpke.public_bytes(), owner=key)
    share_text = p.share_to_text(shares[0], 2, 3).encode()
    keyset_text = p.keyset_to_text(keyset).encode()
    signed = [keyset.signed, req.signed, vote.signed, release.signed, receipt.signed, no_shard.signed]
    return {
        "decode": (signed, lambda d: p.decode(d)),
        "keyset": ([keyset.signed], lambda d: p.Keyset.from_bytes(d)),
        "request": ([req.signed], lambda d: p.Request.from_bytes(d)),
        "vote": ([vote.signed], lambda d: p.Vote.from_bytes(d)),
        "release": ([release.signed], lambda d: p.Release.from_bytes(d)),
        "partial": ([partial.to_bytes()], lambda d: p.Partial.from_bytes(d)),
        "receipt": ([receipt.signed], lambda d: p.Receipt.from_bytes(d)),
        "no-shard": ([no_shard.signed], lambda d: p.NoShard.from_bytes(d)),
        "shard-meta": ([sealed], lambda d: p.read_shard_meta(d)),
        "open-shard": ([sealed], lambda d: p.open_shard(d, hpke, recipient=me, now=1_800_000_000,
                                                        owner=key.public_key().public_bytes_raw())),
        "share-text": ([share_text], lambda d: p.share_from_text(d.decode("utf-8", "replace"))),
        "keyset-text": ([keyset_text], lambda d: p.keyset_from_text(d.decode("utf-8", "replace"))),
        "cosigned": ([p.CoSigned.propose(key, p.encode(["shardnet/fuzz", 1, "x"])).to_bytes()],
                     lambda d: p.CoSigned.from_bytes(d, authorities=frozenset({key.public_key().public_bytes_raw()}),
                                                     max_size=64 * 1024)),
    }


def fuzz_decoders(per_target: int, seed: int, say: Callable[[str], None] = lambda m: None,
                  only: set[str] | None = None) -> list[Outcome]:
    outcomes = []
    for name, (seeds, parse) in _records().items():
        if only is not None and name not in only:
            continue
        rng = random.Random(f"{seed}-{name}")
        out = Outcome(name)
        for data in _inputs(rng, seeds, per_target):
            out.inputs += 1
            try:
                parse(data)
            except (p.ShardnetError, ValueError):
                out.refused += 1
            except Exception as exc:  # noqa: BLE001 - the finding itself
                out.findings.append(_finding(name, exc, data))
        say(f"{name}: {out.inputs} inputs, {len(out.findings)} findings")
        outcomes.append(out)
    return outcomes


# -- stream handlers (a grid node's, in virtual time) ---------------------------------


async def _handlers_campaign(root: pathlib.Path, per_target: int, seed: int,
                             say: Callable[[str], None]) -> list[Outcome]:
    from .grid import Grid

    grid = Grid(root, 4, seed=seed)
    frames: dict[str, list[bytes]] = {}

    def tap(protocol: str, payload: bytes) -> None:
        kept = frames.setdefault(protocol, [])
        if len(kept) < 40 and payload not in kept:
            kept.append(payload)

    grid.network.taps.append(tap)
    outcomes = []
    async with grid.running():
        await grid.wait_directory()
        keyset = await grid.import_key(0, b"fuzz master key", 2, 3)
        await grid.reconstruct(1, keyset)
        await grid.nodes[0].commands()["refresh"]({"keyset": keyset}, _quiet)
        target = grid.nodes[1]
        remote = grid.nodes[0].peer_id  # admitted: the parse paths past the gate
        node = grid.network.nodes[target.peer_id]
        every = [f for kept in frames.values() for f in kept]
        for protocol in sorted(node.handlers):
            _, handler, _ = node.handlers[protocol]
            name = protocol.split("/", 3)[-1]
            rng = random.Random(f"{seed}-{name}")
            out = Outcome(name)
            # A protocol the scenario did not exercise starts from the others' frames.
            for data in _inputs(rng, frames.get(protocol) or every, per_target):
                out.inputs += 1
                try:
                    with trio.fail_after(30):
                        await handler(remote, data)
                except tx.RequestRejected:
                    out.refused += 1
                except Exception as exc:  # noqa: BLE001 - the finding itself
                    out.findings.append(_finding(name, exc, data))
            say(f"{name}: {out.inputs} inputs ({len(frames.get(protocol, []))} seeds), {len(out.findings)} findings")
            outcomes.append(out)
    return outcomes


async def _quiet(_: Any) -> None:
    pass


def fuzz_handlers(per_target: int, seed: int, say: Callable[[str], None] = lambda m: None) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="shardnet-fuzz-") as root:
        return trio.run(_handlers_campaign, pathlib.Path(root), per_target, seed, say,
                        clock=trio.testing.MockClock(autojump_threshold=0))


def replay(corpus: pathlib.Path = CORPUS) -> list[Finding]:
    """Every kept input again, against its target (a decoder's or a handler's name)."""
    decoders = _records()
    found = []
    for path in sorted(corpus.glob("*/*.bin")):
        name, data = path.parent.name, path.read_bytes()
        if name in decoders:
            try:
                decoders[name][1](data)
            except (p.ShardnetError, ValueError):
                continue
            except Exception as exc:  # noqa: BLE001 - a regression
                found.append(_finding(name, exc, data))
    return found


def keep(findings: list[Finding], corpus: pathlib.Path) -> list[pathlib.Path]:
    kept = []
    for f in findings:
        d = corpus / f.target
        d.mkdir(parents=True, exist_ok=True)
        path = d / (hashlib.sha256(f.data).hexdigest()[:16] + ".bin")
        path.write_bytes(f.data)
        kept.append(path)
    return kept


def run_fuzz(*, inputs: int, seed: int, corpus: pathlib.Path | None, say: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    outcomes = fuzz_decoders(inputs, seed, say) + fuzz_handlers(inputs, seed, say)
    findings = [f for o in outcomes for f in o.findings]
    kept = keep(findings, corpus) if corpus is not None and findings else []
    return {
        "seed": seed, "inputs_per_target": inputs, "seconds": round(time.perf_counter() - t0, 1),
        "targets": [{"target": o.target, "inputs": o.inputs, "refused": o.refused, "findings": len(o.findings),
                     "first": o.findings[0].error if o.findings else ""} for o in outcomes],
        "kept": [str(k) for k in kept],
    }


def format_fuzz_report(result: dict[str, Any]) -> str:
    lines = [f"{'target':<28} {'inputs':>8} {'refused':>8} {'findings':>8}"]
    for t in result["targets"]:
        lines.append(f"{t['target']:<28} {t['inputs']:>8} {t['refused']:>8} {t['findings']:>8}"
                     + (f"  {t['first']}" if t["first"] else ""))
    total = sum(t["findings"] for t in result["targets"])
    lines.append(f"{len(result['targets'])} targets, {result['inputs_per_target']} inputs each, seed {result['seed']}, "
                 f"{result['seconds']} s: {total} findings" + (f", kept in {', '.join(result['kept'])}"
                                                                 if result["kept"] else ""))
    return "\n".join(lines)
