"""The crypto of an epoch round alone: the bound a benchmark compares the network's rounds with.

:func:`reshare_crypto` runs one reshare of a t-of-n keyset to n other holders
with the protocol functions a node calls, and nothing else: no network, no
store, no audit log. The coordinator's round machine checks the deals and
echoes and signs the record; each old holder opens its sealed share and makes
its deal; each new holder
opens and verifies the deals, seals its new share to itself and echoes; the
authority checks the evidence and co-signs; every participant checks the
commit, and each old holder signs its deletion receipt.
"""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import epoch as ep
from shardnet.protocol import epoch_records as er

NOW = 1_800_000_000


class _Peer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.hpke = p.HpkePrivateKey.generate("x25519", os.urandom)
        self.id = p.peer_id_of(self.key.public_key().public_bytes_raw())


class Setting:
    """Keys and a keyset made once (not timed): the owner (the coordinator and sole authority),
    the old holders and the new ones."""

    def __init__(self, t: int, n: int) -> None:
        self.t, self.n = t, n
        self.owner = _Peer()
        self.old = [_Peer() for _ in range(n)]
        self.new = [_Peer() for _ in range(n)]
        self.by_id = {q.id: q for q in (self.owner, *self.old, *self.new)}
        attrs = {"holders": {str(i + 1): [q.id] for i, q in enumerate(self.old)}}
        self.keyset, self.shares = p.split_key(b"crypto-only bound key", t, n, owner=self.owner.key, now=NOW,
                                               attrs=attrs)
        self.sealed = [p.seal_shard(p.ShardMeta(self.keyset.keyset_id, 0, s.index, n, t, q.id, NOW, None, bytes(32),
                                                self.keyset.commitments_digest, "x25519"),
                                    s, q.hpke.public_bytes(), owner=self.owner.key)
                       for q, s in zip(self.old, self.shares, strict=True)]


def reshare_crypto(s: Setting) -> float:
    """Seconds of one reshare's crypto (by ``time.perf_counter``)."""
    t0 = time.perf_counter()
    plan = er.Plan(keyset_id=s.keyset.keyset_id, from_epoch=0, prev=er.digest_of(s.keyset, None), action="reshare",
                   threshold=s.t, shares=s.n, holders={i + 1: (q.id,) for i, q in enumerate(s.new)}, not_after=None,
                   round_id=os.urandom(er.ROUND_ID_LEN), created=NOW, deadline=NOW + 60).sign(s.owner.key)
    rnd = ep.EpochRound(plan, s.keyset, None, s.owner.key, participants=(), lock=lambda record: None)
    keys = {q.id: q.hpke.public_bytes() for q in s.new}
    queue = rnd.handle(ep.Start(), NOW)
    while queue:
        e = queue.pop(0)
        ev: ep.Event | None = None
        if isinstance(e, ep.AskDeal):
            q = s.by_id[e.peer]
            plan.check_against(s.keyset, None)
            _, share = p.open_shard(s.sealed[e.index - 1], q.hpke, recipient=q.id, now=NOW,
                                    commitments=s.keyset.commitments)  # the dealer's old share, opened
            ev = ep.DealIn(e.index, e.peer, er.Deal.make(q.key, plan, share, keys, "x25519", os.urandom).signed)
        elif isinstance(e, ep.AskEcho):
            q = s.by_id[e.peer]
            index = next(i for i, hs in plan.holders.items() if e.peer in hs)
            deals = [er.Deal.from_bytes(d) for d in e.deals]
            share, record = er.new_share(plan, s.keyset, deals, index=index, peer=e.peer, opener=q.hpke, old=None)
            meta = p.ShardMeta(s.keyset.keyset_id, record.epoch, index, record.shares, record.threshold, q.id, NOW,
                               None, bytes(32), record.commitments_digest, "x25519", epoch_record=record.digest)
            p.seal_shard(meta, share, q.hpke.public_bytes(), owner=q.key)
            ev = ep.EchoIn(e.peer, er.Echo.make(q.key, record, index, er.qualified_digest(deals)).signed)
        elif isinstance(e, ep.AskSign):
            q = s.by_id[e.peer]
            record = er.check_evidence(plan, s.keyset, None, e.deals, e.echoes)
            ev = ep.SignatureIn(e.peer, p.CoSigned(record.body(), ()).signed_by(q.key).to_bytes())
        elif isinstance(e, ep.Commit):
            er.successor(s.keyset, None, e.record)
            rnd.add_receipts(rnd.me, [])
        elif isinstance(e, ep.SendCommit):  # each participant checks it; an old holder erases its share
            rec = er.successor(s.keyset, None, e.record)
            q = s.by_id[e.peer]
            receipts = tuple(er.Erased.make(q.key, keyset_id=rec.keyset_id, epoch=0, index=i + 1, record=rec.digest,
                                            time=NOW).signed for i, old in enumerate(s.old) if old is q)
            ev = ep.Acked(e.peer, receipts)
        elif isinstance(e, ep.Done):
            return time.perf_counter() - t0
        elif isinstance(e, ep.Aborted):
            raise AssertionError(f"the crypto-only round aborted: {e.message}")
        if ev is not None:
            queue.extend(rnd.handle(ev, NOW))
    raise AssertionError(f"the crypto-only round stopped {rnd.state}")
