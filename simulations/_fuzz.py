"""The fuzz campaign (``shardnet bench fuzz``): every decoder, every stream handler's parse
path and every gossip validator, fed inputs made from real ones.

Seeds are real: records made with the protocol's own constructors, and the frames and
gossip messages each protocol and topic carried while a small grid imported a key,
reconstructed it and refreshed it (the memory network's taps). An engine
(:mod:`._fuzz_engines`) makes inputs from them. A decoder may refuse an input only with
the errors it documents (``ShardnetError``, ``ValueError``); a handler only with
``RequestRejected`` (what becomes a refusal on the wire); a validator only by returning
False. Anything else is a finding: it is printed, and its input kept under ``--corpus``
(one file per input, named by its hash) so that a test replays it.

The decoders run in this process (atheris: in one process per target); the handlers and
validators in one grid, in virtual time. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node import _transport as tx

from . import _fuzz_engines as engines

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fuzz-corpus"
#: What a decoder's inputs can reach; a handler's and a validator's reach the node too.
DECODER_CODE = ("shardnet.protocol",)
NODE_CODE = ("shardnet.protocol", "shardnet.node")


@dataclass
class Finding:
    target: str
    error: str
    data: bytes = field(repr=False)


#: Findings kept with their inputs, per target (all are counted): the first of each kind
#: of error, up to this many.
MAX_KEPT = 20


class EngineFailed(Exception):
    """An engine broke (its process died or hung), as opposed to a target misbehaving."""


@dataclass
class Outcome:
    target: str
    engine: str = "mutation"
    seeds: int = 0  # the target's own seeds (0: it borrowed other targets')
    inputs: int = 0
    refused: int = 0  # inputs refused with a documented error (the expected case)
    found: int = 0  # inputs that misbehaved; the first of each error kind are kept in findings
    findings: list[Finding] = field(default_factory=list)
    lines: set[tuple[str, int]] = field(default_factory=set, repr=False)  # with --coverage
    arcs: set[tuple[str, int, int]] = field(default_factory=set, repr=False)

    def add(self, finding: Finding) -> None:
        self.found += 1
        kind = finding.error.split(":", 1)[0]
        if len(self.findings) < MAX_KEPT and all(f.error.split(":", 1)[0] != kind for f in self.findings):
            self.findings.append(finding)


def _finding(target: str, exc: BaseException, data: bytes) -> Finding:
    return Finding(target, f"{type(exc).__name__}: {exc}"[:300], data)


def _dirname(target: str) -> str:
    """The corpus folder of a target's kept inputs."""
    return target.replace("/", "_").replace(":", "_")


def check_decoder(out: Outcome, parse: Callable[[bytes], Any], data: bytes) -> None:
    """One input through a decoder: refused cleanly, accepted, or a finding."""
    out.inputs += 1
    try:
        parse(data)
    except (p.ShardnetError, ValueError):
        out.refused += 1
    except Exception as exc:  # noqa: BLE001 - the finding itself
        out.add(_finding(out.target, exc, data))


# -- decoders (protocol/, no IO) ----------------------------------------------------------


def _records() -> dict[str, tuple[list[bytes], Callable[[bytes], Any]]]:
    """Each decoder with real encodings to start from."""
    rng = random.Random(1)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes_raw()
    me = p.peer_id_of(pub)
    now = 1_800_000_000
    keyset, shares = p.split_key(b"fuzz master key", 2, 3, owner=key, now=now,
                                 attrs={"holders": {"1": [me], "2": [me], "3": [me]}}, rng=rng.randbytes)
    eph = p.HpkePrivateKey.generate("x25519", rng.randbytes)
    req = p.Request.make(key, keyset_id=keyset.keyset_id, mode="unwrap", reason="fuzz", ephemeral=eph.public_bytes(),
                         nonce=bytes(16), created=now, not_after=now + 300)
    vote = p.Vote.make(key, req, "approve", now + 1)
    partial = p.partial_decrypt(keyset, shares[0], req.id.encode(), rng=rng.randbytes)
    release = p.Release.make(key, req, epoch=0, index=1, payload=p.partial_payload(partial))
    receipt = p.Receipt.make(key, keyset_id=keyset.keyset_id, epoch=0, index=1, shard_digest=bytes(32),
                             delivery_digest=bytes(32), status="stored", reason="", time=1)
    no_shard = p.NoShard.make(key, req, epoch=0)
    hpke = p.HpkePrivateKey.generate("x25519", rng.randbytes)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, me, now, None, keyset.policy_hash,
                       keyset.commitments_digest, "x25519")
    sealed = p.seal_shard(meta, shares[0], hpke.public_bytes(), owner=key)
    share_text = p.share_to_text(shares[0], 2, 3).encode()
    keyset_text = p.keyset_to_text(keyset).encode()
    keys = {"x25519": hpke.public_bytes()}
    descriptor = p.Descriptor.make(key, addrs=["/ip4/127.0.0.1/tcp/4001"], hpke=keys, name="fuzz", country="DE",
                                   city="Berlin", org="fuzz", version="0.0", seq=1)
    delivery = p.Delivery.make(key, keyset_id=keyset.keyset_id, epoch=0, index=1, recipient=me, sealed=sealed,
                               sent_at=now, nonce=bytes(16))
    genesis = p.Genesis.make(key, name="fuzz", authorities=[pub], quorum=1, created=now)
    join = p.JoinRequest.make(key, network_id=genesis.network_id, hpke=keys, name="fuzz", org="fuzz", country="DE",
                              city="Berlin", time=now)
    admission = p.Admission.make_body(network_id=genesis.network_id, peer_id=me, hpke=keys, roles=["custodian"],
                                      name="fuzz", org="fuzz", country="DE", city="Berlin", issued=now,
                                      not_after=now + 86400)
    expulsion = p.MemberRevocation.make_body(network_id=genesis.network_id, peer_id=me, reason="fuzz", time=now)
    rules = p.keyset_rules
    policy = rules.PolicyVersion.make_body(keyset_id=keyset.keyset_id, version=1, policy=p.DEFAULT_POLICY,
                                           placement="distinct:country", time=now)
    revocations = rules.RevocationList.make_body(
        keyset_id=keyset.keyset_id, version=1, time=now,
        entries=[rules.Revoked("custodian", me, 0, "fuzz", now), rules.Revoked("shard", "", 2, "fuzz", now, 0)])
    cosigned = [p.CoSigned.propose(key, body).to_bytes() for body in (policy, revocations)]
    feed = p.feed.make(key, name="fuzz", seq=1, issued=now, expires=now + 3600, threat_level=2,
                       compromised=[me], unsafe=[("country", "XX")])
    audit = p.encode_audit_body({"event": "store", "keyset": keyset.id_hex, "index": 1, "peer": me})
    fetch = p.keyset_fetch
    er = p.epoch_records
    others = [p.peer_id_of(Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32).public_key().public_bytes_raw())
              for i in (7, 8)]
    holders: dict[int, tuple[str, ...]] = {1: (me,), 2: (others[0],), 3: (others[1],)}
    plan = er.Plan(keyset.keyset_id, 0, er.digest_of(keyset, None), "refresh", 2, 3, holders, None, bytes(16),
                   now, now + 60).sign(key)
    deals = [er.Deal.make(key, plan, share, {peer: hpke.public_bytes() for peer in (me, *others)}, "x25519",
                          rng.randbytes)
             for share in shares[:2]]
    record = er.EpochRecord(keyset.keyset_id, 1, "refresh", 2, 3, er.new_commitments(plan, keyset, deals), holders,
                            None, plan.prev, plan.round_id, now, now + 60)
    cs_record = p.CoSigned.propose(key, record.body()).to_bytes()
    echo = er.Echo.make(key, record, 1, er.qualified_digest(deals))
    erased = er.Erased.make(key, keyset_id=keyset.keyset_id, epoch=1, index=1, record=record.digest, time=now)
    order = er.RewrapOrder.make(key, keyset_id=keyset.keyset_id, epoch=0, round_id=bytes(16), created=now,
                                deadline=now + 60)
    rewrapped = er.Rewrapped.make(key, keyset_id=keyset.keyset_id, epoch=0, index=1, wrap=1,
                                  sealed_digest=bytes(32), round_id=bytes(16), time=now)
    challenge = p.possession.Challenge.make("x25519", hpke.public_bytes(), challenger=me, rng=rng.randbytes)
    proof = p.possession.answer(challenge.frame, {"x25519": hpke}, challenger=me, key=key)
    reply = p.batches.epoch_batch_reply([(p.batches.Status.OK, b"ok"), (p.batches.Status.REFUSED, b"no")])
    signed = [keyset.signed, req.signed, vote.signed, release.signed, receipt.signed, no_shard.signed,
              descriptor.signed, delivery.signed, genesis.signed, join.signed]
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
        "open-shard": ([sealed], lambda d: p.open_shard(d, hpke, recipient=me, now=now, owner=pub)),
        "share-text": ([share_text], lambda d: p.share_from_text(d.decode("utf-8", "replace"))),
        "keyset-text": ([keyset_text], lambda d: p.keyset_from_text(d.decode("utf-8", "replace"))),
        "cosigned": ([p.CoSigned.propose(key, p.encode(["shardnet/fuzz", 1, "x"])).to_bytes(), *cosigned],
                     lambda d: p.CoSigned.from_bytes(d, authorities=frozenset({pub}), max_size=64 * 1024)),
        "descriptor": ([descriptor.signed], lambda d: p.Descriptor.from_bytes(d)),
        "delivery": ([delivery.signed], lambda d: p.Delivery.from_bytes(d)),
        "genesis": ([genesis.signed], lambda d: p.Genesis.from_bytes(d)),
        "join-request": ([join.signed], lambda d: p.JoinRequest.from_bytes(d)),
        "membership-body": ([admission, expulsion], lambda d: p.membership.parse_body(d)),
        "rules-body": ([policy, revocations], lambda d: rules.parse_body(d)),
        "policy": ([p.DEFAULT_POLICY.encode()], lambda d: p.Policy(d.decode("utf-8", "replace"))),
        "placement": ([b"distinct:country,min-distinct:org=2,exclude:continent=AN"],
                      lambda d: p.placement.parse(d.decode("utf-8", "replace"))),
        "feed": ([feed], lambda d: p.feed.parse(d, pub)),
        "audit-body": ([audit], lambda d: p.decode_audit_body(d)),
        "epoch-batch": ([p.batches.epoch_batch([req.signed, vote.signed])], lambda d: p.batches.parse_epoch_batch(d)),
        "rules-batch": (p.batches.rules_batches(cosigned), lambda d: p.batches.parse_rules_batch(d)),
        "directory-pull": ([p.wire.PULL, p.directory_pull.encode_pull(p.directory_pull.summary(
            [(p.directory_pull.summary_key(me), 3)]))], lambda d: p.directory_pull.decode_pull(d)),
        "keyset-fetch": ([fetch.request(keyset.keyset_id, bytes(16))], lambda d: fetch.parse_request(d)),
        "epoch-record": ([cs_record], lambda d: er.EpochRecord.parse(d)),
        "epoch-plan": ([plan.signed], lambda d: er.Plan.from_bytes(d)),
        "epoch-deal": ([d.signed for d in deals], lambda d: er.Deal.from_bytes(d)),
        "epoch-echo": ([echo.signed], lambda d: er.Echo.from_bytes(d)),
        "epoch-erased": ([erased.signed], lambda d: er.Erased.from_bytes(d)),
        "rewrap-order": ([order.signed], lambda d: er.RewrapOrder.from_bytes(d)),
        "rewrapped": ([rewrapped.signed], lambda d: er.Rewrapped.from_bytes(d)),
        "epoch-batch-reply": ([reply], lambda d: p.batches.parse_epoch_batch_reply(d, 2)),
        "rules-peek": (cosigned, lambda d: rules.peek(d)),
        "possession-proof": ([proof], lambda d: challenge.check(d, custodian=me, challenger=me)),
        "peek-shard-meta": ([sealed], lambda d: p.peek_shard_meta(d)),
        "peer-id": ([me.encode()], lambda d: p.public_key_of(d.decode("utf-8", "replace"))),
        "feed-key": ([me.encode(), pub.hex().encode()], lambda d: p.feed.signer_key(d.decode("utf-8", "replace"))),
        "keyset-fetch-reply": ([fetch.reply(keyset.signed, [p.Receipt.make(
            key, keyset_id=keyset.keyset_id, epoch=0, index=1, shard_digest=bytes(32),
            delivery_digest=fetch.proof_digest(bytes(16), me), status="stored", reason="", time=now).signed])],
                               lambda d: fetch.check_reply(d, keyset_id=keyset.keyset_id, responder=me,
                                                           nonce=bytes(16), requester=me)),
    }


def decoder_names() -> list[str]:
    return list(_records())


def fuzz_decoders(per_target: int, seed: int, say: Callable[[str], None] = lambda m: None,
                  only: set[str] | None = None, engine: str = "mutation", coverage: bool = False) -> list[Outcome]:
    if engine == "atheris":
        return [_atheris(name, per_target, seed, coverage, say) for name in _records()
                if only is None or name in only]
    outcomes = []
    for name, (seeds, parse) in _records().items():
        if only is not None and name not in only:
            continue
        out = Outcome(name, engine, seeds=len(seeds))
        batch = engines.inputs(engine, f"{seed}-{name}", seeds, per_target)
        with engines.Reach(DECODER_CODE, on=coverage) as reach:
            for data in batch:
                check_decoder(out, parse, data)
        out.lines, out.arcs = reach.lines, reach.arcs
        say(f"{name}: {out.inputs} inputs, {out.found} findings")
        outcomes.append(out)
    return outcomes


def _atheris(name: str, per_target: int, seed: int, coverage: bool, say: Callable[[str], None]) -> Outcome:
    """One decoder under libFuzzer, in a process of its own (libFuzzer ends the process it
    runs in)."""
    with tempfile.TemporaryDirectory(prefix="shardnet-atheris-") as tmp:
        work = pathlib.Path(tmp)
        result = work / "result.json"
        spec = {"target": name, "inputs": per_target, "seed": seed, "coverage": coverage, "out": str(result),
                "work": tmp}
        with open(work / "libfuzzer.log", "w+b") as log:
            try:  # libFuzzer keeps a crashing input as an artifact in the child's directory
                proc = subprocess.run([sys.executable, "-m", "shardnet.simulations._fuzz_atheris", json.dumps(spec)],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=tmp, check=False,
                                      timeout=120 + per_target * 0.05)
            except subprocess.TimeoutExpired:
                raise EngineFailed(f"atheris on {name} did not finish {per_target} inputs in time") from None
            if not result.exists():
                crashed = sorted(work.glob("crash-*")) + sorted(work.glob("timeout-*")) + sorted(work.glob("oom-*"))
                if crashed:  # the process died on an input: that input is the finding
                    out = Outcome(name, "atheris", inputs=1)
                    out.add(Finding(name, f"ProcessDied: {crashed[0].name.split('-')[0]} (exit {proc.returncode})",
                                    crashed[0].read_bytes()))
                    return out
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-2:]
                raise EngineFailed(f"atheris on {name} ended (exit {proc.returncode}) before {per_target} inputs: "
                                   + " | ".join(tail))
        got = json.loads(result.read_text())
    out = Outcome(name, "atheris", seeds=got["seeds"], inputs=got["inputs"], refused=got["refused"],
                  found=got["found"],
                  findings=[Finding(name, f["error"], bytes.fromhex(f["data"])) for f in got["findings"]],
                  lines={(f, n) for f, n in got["lines"]}, arcs={(f, a, b) for f, a, b in got["arcs"]})
    say(f"{name}: {out.inputs} inputs (atheris), {out.found} findings")
    return out


# -- stream handlers and gossip validators (a grid node's, in virtual time) ----------------


async def _handlers_campaign(root: pathlib.Path, per_target: int, seed: int, say: Callable[[str], None],
                             engine: str, coverage: bool, first: dict[str, list[bytes]]) -> list[Outcome]:
    from .grid import Grid

    grid = Grid(root, 4, seed=seed)
    frames: dict[str, list[bytes]] = {}
    gossip: dict[str, dict[str, list[bytes]]] = {}  # topic -> author -> messages

    def tap(protocol: str, payload: bytes) -> None:
        kept = frames.setdefault(protocol, [])
        if len(kept) < 40 and payload not in kept:
            kept.append(payload)

    def gossip_tap(topic: str, author: str, data: bytes) -> None:
        kept = gossip.setdefault(topic, {}).setdefault(author, [])
        if len(kept) < 20 and data not in kept:
            kept.append(data)

    grid.network.taps.append(tap)
    grid.network.gossip_taps.append(gossip_tap)
    outcomes = []
    async with grid.running():
        await grid.wait_directory()
        keyset = await grid.import_key(0, b"fuzz master key", 2, 3)
        await grid.reconstruct(1, keyset)
        owner = grid.nodes[0].commands()
        await owner["policy-publish"]({"keyset": keyset, "policy": p.DEFAULT_POLICY}, _quiet)
        await owner["revoke"]({"subject": "requester", "value": grid.nodes[3].peer_id, "reason": "fuzz",
                               "keyset": keyset}, _quiet)
        await trio.sleep(2 * p.wire.RULES_PULL_EVERY)  # the rules' anti-entropy pulls, for their frames
        await owner["rewrap"]({"keyset": keyset}, _quiet)
        # Last, and fuzzed at once: a plan is refused as stale a minute past its deadline, and
        # the fuzz runs in the same virtual time, so the epoch frames' deal, echo and cosign
        # paths are reached.
        await owner["refresh"]({"keyset": keyset}, _quiet)
        target = grid.nodes[1]
        remote = grid.nodes[0].peer_id  # admitted: the parse paths past the gate
        node = grid.network.nodes[target.peer_id]
        seeds = {_short(protocol): kept for protocol, kept in frames.items()}  # the network's scope left out
        for name, extra in _unexercised(grid, keyset, seeds).items():
            seeds.setdefault(name, []).extend(extra)
        every = [f for kept in seeds.values() for f in kept]
        for protocol in sorted(node.handlers):
            proto, handler, _ = node.handlers[protocol]
            name = _short(protocol)
            out = Outcome(name, engine, seeds=len(seeds.get(name, [])))
            # A protocol that nothing gave a seed starts from the others' frames. Nothing
            # longer than the protocol's cap: the transport refuses that before a handler.
            batch = itertools.chain(first.get(_dirname(name), []), engines.inputs(
                engine, f"{seed}-{name}", seeds.get(name) or every, per_target))
            with engines.Reach(NODE_CODE, on=coverage) as reach:
                for data in (d[:proto.max_request] for d in batch):
                    out.inputs += 1
                    try:
                        with trio.fail_after(30):
                            await handler(remote, data)
                    except tx.RequestRejected:
                        out.refused += 1
                    except Exception as exc:  # noqa: BLE001 - the finding itself
                        out.add(_finding(name, exc, data))
            out.lines, out.arcs = reach.lines, reach.arcs
            say(f"{name}: {out.inputs} inputs ({out.seeds} seeds), {out.found} findings")
            outcomes.append(out)
        messages = {_short_topic(topic): authors for topic, authors in gossip.items()}
        for name, extra in _unheard(grid, messages).items():
            messages.setdefault(name, {}).setdefault(remote, []).extend(extra)
        caps = {t.name.split("/", 1)[-1]: t.max_message for t in p.wire.TOPICS}  # not scoped: shardnet/x/1
        for topic in sorted(node.topics):
            heard = messages.get(_short_topic(topic), {})
            out = _validator_campaign(topic, node.topics[topic].validator, heard, per_target, seed, engine, coverage,
                                      remote, cap=caps[_short_topic(topic)], first=first)
            outcomes.append(out)
            say(f"{out.target}: {out.inputs} inputs ({out.seeds} seeds from {len(heard)} authors), "
                f"{out.found} findings")
    return outcomes


def _short(scoped: str) -> str:
    """``/shardnet/<network>/deliver/1`` -> ``deliver/1``."""
    return scoped.split("/", 3)[-1]


def _unexercised(grid: Any, keyset: str, seeds: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """Seeds, made as a peer would make them, for the protocols the scenario leaves quiet:
    a bare directory pull, a v1 release ask (the v2 one's frame), a keyset notice and a
    keyset fetch for the scenario's keyset."""
    record = grid.nodes[0].store.keyset(keyset)["record"]
    return {"directory/1": [p.wire.PULL], "release/1": list(seeds.get("release/2", [])), "keyset/1": [record],
            "keyset-fetch/1": [p.keyset_fetch.request(bytes.fromhex(keyset), bytes(16))]}


def _short_topic(scoped: str) -> str:
    """``shardnet/<network>/membership/1`` -> ``membership/1``."""
    return scoped.split("/", 2)[-1]


def _unheard(grid: Any, messages: dict[str, dict[str, list[bytes]]]) -> dict[str, list[bytes]]:
    """Messages of node 0 (the grid's authority) for the topics the scenario leaves quiet:
    an admission and an expulsion, and a rules batch of the rules it published."""
    from .grid import admission_body

    authority = grid.homes[0].identity()
    stranger = p.peer_id_of(Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw())
    g = grid.genesis_or_fail()
    admission = admission_body(g, stranger, {"x25519": bytes(range(32))}, name="fuzz", org="fuzz", country="NZ")
    expulsion = p.MemberRevocation.make_body(network_id=g.network_id, peer_id=stranger, reason="fuzz",
                                             time=int(grid.nodes[0].now()))
    rules = [m for t in ("policy/1", "revocation/1") for ms in messages.get(t, {}).values() for m in ms]
    return {"membership/1": [p.CoSigned.propose(authority, b).to_bytes() for b in (admission, expulsion)],
            "rules-batch/1": p.batches.rules_batches(rules) if rules else []}


def _validator_campaign(topic: str, validator: tx.Validator, by_author: dict[str, list[bytes]], per_target: int,
                        seed: int, engine: str, coverage: bool, stranger: str, *, cap: int = engines.MAX_INPUT,
                        first: dict[str, list[bytes]] | None = None) -> Outcome:
    """A topic's validator fed each author's messages, mutated, as that author's (so that
    the checks past "signed by whoever sent it" are reached), none longer than the topic's
    cap (gossip drops those before any validator); an unused topic gets random inputs from
    an admitted peer. ``first``: kept inputs (by corpus folder) that go first, as the
    admitted peer's."""
    name = "gossip:" + "/".join(topic.rsplit("/", 2)[-2:])
    out = Outcome(name, engine, seeds=sum(map(len, by_author.values())))
    authors = sorted(by_author) or [stranger]
    kept = [(stranger, d) for d in (first or {}).get(_dirname(name), [])]
    with engines.Reach(NODE_CODE, on=coverage) as reach:
        for k, author in enumerate(authors):
            n = per_target // len(authors) + (k < per_target % len(authors))
            made = engines.inputs(engine, f"{seed}-{name}-{author}", by_author.get(author, []), n)
            for who, data in itertools.chain(kept if k == 0 else [], ((author, d[:cap]) for d in made)):
                out.inputs += 1
                try:
                    accepted = validator(who, data)
                except Exception as exc:  # noqa: BLE001 - a validator refuses by returning False
                    out.add(_finding(name, exc, data))
                    continue
                if accepted is not True and accepted is not False:
                    out.add(Finding(name, f"TypeError: the validator returned {accepted!r}, not a bool", data))
                elif not accepted:
                    out.refused += 1
    out.lines, out.arcs = reach.lines, reach.arcs
    return out


async def _quiet(_: Any) -> None:
    pass


def fuzz_handlers(per_target: int, seed: int, say: Callable[[str], None] = lambda m: None,
                  engine: str = "mutation", coverage: bool = False,
                  first: dict[str, list[bytes]] | None = None) -> list[Outcome]:
    """Every stream handler and gossip validator of a grid node; ``first``: inputs to feed
    each before the engine's (by corpus folder: :func:`replay`)."""
    with tempfile.TemporaryDirectory(prefix="shardnet-fuzz-") as root:
        return trio.run(_handlers_campaign, pathlib.Path(root), per_target, seed, say, engine, coverage,
                        first or {}, clock=trio.testing.MockClock(autojump_threshold=0))


def replay(corpus: pathlib.Path = CORPUS) -> list[Finding]:
    """Every kept input again, against its target: a decoder's directly, a handler's or a
    validator's on a grid node. A folder that names no target is a finding too (a renamed
    target would otherwise replay nothing)."""
    decoders = _records()
    found: list[Finding] = []
    grid_inputs: dict[str, list[bytes]] = {}
    for path in sorted(corpus.glob("*/*.bin")):
        name, data = path.parent.name, path.read_bytes()
        if name in decoders:
            out = Outcome(name)
            check_decoder(out, decoders[name][1], data)
            found += out.findings
        else:
            grid_inputs.setdefault(name, []).append(data)
    if grid_inputs:
        outcomes = fuzz_handlers(0, 1, first=grid_inputs)
        found += [f for o in outcomes for f in o.findings]
        for name in sorted(set(grid_inputs) - {_dirname(o.target) for o in outcomes}):
            found.append(Finding(name, f"UnknownTarget: {corpus.name}/{name} names no decoder, handler or validator",
                                 b""))
    return found


def keep(findings: list[Finding], corpus: pathlib.Path) -> list[pathlib.Path]:
    kept = []
    for f in findings:
        d = corpus / _dirname(f.target)
        d.mkdir(parents=True, exist_ok=True)
        path = d / (hashlib.sha256(f.data).hexdigest()[:16] + ".bin")
        path.write_bytes(f.data)
        kept.append(path)
    return kept


def run_fuzz(*, inputs: int, seed: int, corpus: pathlib.Path | None, say: Callable[[str], None],
             engines_: Iterable[str] = ("mutation",), coverage: bool = False,
             only: set[str] | None = None) -> dict[str, Any]:
    """Every target (or those in ``only``: decoders by name, and ``handlers`` for the
    grid's handlers and validators) under each engine (atheris drives the decoders only),
    and with ``coverage`` what each reached, side by side."""
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    ran = list(dict.fromkeys(engines_))
    decoders = None if only is None else only - {"handlers"}
    for engine in ran:
        if decoders is None or decoders:
            outcomes += fuzz_decoders(inputs, seed, say, engine=engine, coverage=coverage, only=decoders)
        if engine != "atheris" and (only is None or "handlers" in only):
            outcomes += fuzz_handlers(inputs, seed, say, engine=engine, coverage=coverage)
    findings = [f for o in outcomes for f in o.findings]
    kept = keep(findings, corpus) if corpus is not None and findings else []
    result: dict[str, Any] = {
        "seed": seed, "inputs_per_target": inputs, "engines": ran, "seconds": round(time.perf_counter() - t0, 1),
        "targets": [{"target": o.target, "engine": o.engine, "seeds": o.seeds, "inputs": o.inputs,
                     "refused": o.refused, "findings": o.found, "first": o.findings[0].error if o.findings else "",
                     **({"lines": len(o.lines), "arcs": len(o.arcs)} if coverage else {})} for o in outcomes],
        "kept": [str(k) for k in kept],
    }
    if coverage:
        result["coverage"] = _coverage(outcomes, ran)
    return result


def _coverage(outcomes: list[Outcome], ran: list[str]) -> dict[str, Any]:
    """The engines compared over the decoders (every engine drives them), and what each
    reached over everything it drove (atheris drives the decoders only)."""
    decoders = set(_records())
    got: dict[str, tuple[set[Any], set[Any]]] = {e: (set(), set()) for e in ran}
    total: dict[str, tuple[set[Any], set[Any]]] = {e: (set(), set()) for e in ran}
    for o in outcomes:
        for into in (got, total) if o.target in decoders else (total,):
            into[o.engine][0].update(o.lines)
            into[o.engine][1].update(o.arcs)
    return {"decoders": engines.compare(got),
            "driven": {e: {"lines": len(ln), "arcs": len(a)} for e, (ln, a) in total.items()}}


def format_fuzz_report(result: dict[str, Any]) -> str:
    cov = "coverage" in result
    lines = [f"{'target':<28} {'engine':<10} {'inputs':>8} {'refused':>8} {'findings':>8}"
             + (f" {'lines':>6} {'arcs':>6}" if cov else "")]
    for t in result["targets"]:
        lines.append(f"{t['target']:<28} {t['engine']:<10} {t['inputs']:>8} {t['refused']:>8} {t['findings']:>8}"
                     + (f" {t['lines']:>6} {t['arcs']:>6}" if cov else "")
                     + (f"  {t['first']}" if t["first"] else ""))
    if cov:
        c = result["coverage"]["decoders"]
        lines.append(f"coverage over the decoders: union {c['union_lines']} lines, {c['union_arcs']} arcs")
        for engine, e in c["engines"].items():
            only = ", ".join(e["only_lines"][:12]) + (" ..." if len(e["only_lines"]) > 12 else "")
            lines.append(f"  {engine:<10} {e['lines']:>5} lines {e['arcs']:>5} arcs; alone "
                         f"{len(e['only_lines'])} lines, {len(e['only_arcs'])} arcs" + (f": {only}" if only else ""))
        lines.append("over everything each drove: " + "; ".join(
            f"{e} {d['lines']} lines, {d['arcs']} arcs" for e, d in result["coverage"]["driven"].items()))
    total = sum(t["findings"] for t in result["targets"])
    lines.append(f"{len(result['targets'])} targets, up to {result['inputs_per_target']} inputs each, "
                 f"{'+'.join(result['engines'])}, seed {result['seed']}, {result['seconds']} s: {total} findings"
                 + (f", kept in {', '.join(result['kept'])}" if result["kept"] else ""))
    return "\n".join(lines)
