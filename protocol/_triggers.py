"""Which epoch action a keyset's state calls for, and why (private).

A keyset's authority nodes look at each keyset they are an authority of and
ask :func:`decide`: given what this node knows now (the keyset at its current
epoch, the rules in force, the membership of its holders, the threat feed, the
keyset's schedule and the clock), is an action due, which one, and what does it
defeat? The node then runs that action as an operator's command would. The
order is the order of harm:

1. **reshare**, which moves shares away from a holder that must not keep one:
   revoked for the keyset, its membership revoked or expired, its admission
   expiring within the margin, marked compromised by a feed, in a country or
   org a feed marks unsafe, or breaking the placement in force; and which deals
   every index anew after a shard index of the current epoch was revoked;
2. **refresh** before the keyset's not-after, within its margin, when the
   keyset allows renewal (a new not-after);
3. a scheduled **refresh** (``refresh_every``), then a scheduled **rewrap**
   (``rewrap_every``).

Pure: no clock and no IO; the node hands in ``now`` and what it knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._placement import Candidate, Constraint, violations

#: What each action defeats, in the words of the revocation table.
DEFEATS = {
    "refresh": "fewer than t old shares leaked over time: old shares no longer combine with the new ones",
    "reshare": "a revoked custodian, or a changed policy or placement: the old holders' shares no longer "
               "combine with the new ones, and the old holders erased theirs",
    "rewrap": "theft of the stored ciphertext and the old wrapping key (after a node's first rewrap: the key "
              "its admission certifies stays, for deliveries); not a custodian that already read its share",
}
#: The shortest schedule (``refresh_every``, ``rewrap_every``) in seconds: shorter ones are
#: refused at import and not honoured from a keyset record.
MIN_SCHEDULE = 60
#: The share of a lifetime (an admission's, a keyset's) before its end from which it counts
#: as ending: 10%, the default margin.
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class Holder:
    """One holder of one index, as this node knows it now."""

    peer_id: str
    index: int
    state: str  # its membership: admitted, revoked, expired, not-yet, unknown
    issued: int = 0  # its admission's, if any
    not_after: int = 0
    candidate: Candidate = field(default_factory=lambda: Candidate("", "", ""))


@dataclass(frozen=True)
class Threats:
    """What the threat feeds an authority node follows say now."""

    compromised: frozenset[str] = frozenset()
    unsafe: frozenset[tuple[str, str]] = frozenset()  # (attribute, value): ("country", "XX"), ("org", "...")


@dataclass(frozen=True)
class Situation:
    keyset_id: str
    epoch: int
    holders: tuple[Holder, ...]
    revoked: frozenset[str]  # custodians revoked for the keyset
    revoked_indices: frozenset[int]  # shard indices revoked at this epoch
    placement: tuple[Constraint, ...]
    created: int  # the keyset's
    not_after: int | None  # the epoch in force's
    renew: bool  # whether its authorities allow a refresh to extend the not-after
    refresh_every: int | None
    rewrap_every: int | None
    last_epoch_at: int  # when the current epoch began (the import for epoch 0)
    last_rewrap_at: int  # when its shards were last rewrapped (or the current epoch began)
    threats: Threats = Threats()
    margin: float = DEFAULT_MARGIN
    lifetime: int | None = None  # the keyset's first lifetime (its --expires); default not_after - created

    def life(self) -> tuple[int, int] | None:
        """The current lifetime: (start, end), a renewed one counted from its renewal."""
        if self.not_after is None:
            return None
        length = self.lifetime if self.lifetime else self.not_after - self.created
        return self.not_after - length, self.not_after


@dataclass(frozen=True)
class Decision:
    action: str  # rewrap, refresh or reshare
    trigger: str  # revocation, membership, expiry, threat-feed, placement, schedule
    reason: str
    away: tuple[str, ...] = ()  # a reshare: the holders to move away from
    renew: bool = False  # a refresh: with a new not-after

    @property
    def defeats(self) -> str:
        return DEFEATS[self.action]


def ending(start: int, end: int, now: int, margin: float) -> bool:
    """Whether ``now`` is within the last ``margin`` of the lifetime ``start``..``end``."""
    return now >= end - max(1, int((end - start) * margin))


def decide(s: Situation, now: int) -> Decision | None:
    away: dict[str, tuple[str, str]] = {}  # peer -> (trigger, why)
    for h in s.holders:
        if h.peer_id in s.revoked:
            away.setdefault(h.peer_id, ("revocation", f"{h.peer_id} is revoked for this keyset"))
        elif h.state in ("revoked", "expired"):  # "unknown": maybe only not pulled yet, so no trigger
            away.setdefault(h.peer_id, ("membership", f"the membership of {h.peer_id} is {h.state}"))
        elif h.not_after and ending(h.issued, h.not_after, now, s.margin):
            away.setdefault(h.peer_id, ("membership", f"the admission of {h.peer_id} expires at {h.not_after}"))
        elif h.peer_id in s.threats.compromised:
            away.setdefault(h.peer_id, ("threat-feed", f"a threat feed marks {h.peer_id} compromised"))
        else:
            bad = sorted(f"{a}={v}" for a, v in s.threats.unsafe if h.candidate.attr(a) == v)
            if bad:
                away.setdefault(h.peer_id, ("threat-feed", f"a threat feed marks {', '.join(bad)} of "
                                                           f"{h.peer_id} unsafe"))
    if away:
        triggers = sorted({t for t, _ in away.values()})
        return Decision("reshare", triggers[0] if len(triggers) == 1 else ",".join(triggers),
                        "; ".join(why for _, why in away.values()), tuple(sorted(away)))
    if s.revoked_indices:
        return Decision("reshare", "revocation", f"shard indices {', '.join(map(str, sorted(s.revoked_indices)))} "
                                                 f"of epoch {s.epoch} are revoked: every index is dealt anew",
                        renew=_renewing(s, now))
    broken = violations([h.candidate for h in s.holders], s.placement)
    if broken:
        return Decision("reshare", "placement", f"the holders break the placement in force: {'; '.join(broken)}",
                        tuple(sorted(_breakers(s.holders, s.placement))))
    if _renewing(s, now):
        return Decision("refresh", "expiry", f"the keyset expires at {s.not_after}: refreshed with a new "
                                             "not-after", renew=True)
    life = s.life()
    if life is not None and (now > life[1] or ending(*life, now, s.margin)):
        return None  # not renewed, or past it: the node warns (see warnings), nothing to run
    if s.refresh_every and now >= s.last_epoch_at + s.refresh_every and not s.revoked_indices:
        return Decision("refresh", "schedule", f"refreshed every {s.refresh_every} s, last at {s.last_epoch_at}")
    if s.rewrap_every and now >= max(s.last_rewrap_at, s.last_epoch_at) + s.rewrap_every:
        return Decision("rewrap", "schedule", f"rewrapped every {s.rewrap_every} s, last at "
                                              f"{max(s.last_rewrap_at, s.last_epoch_at)}")
    return None


def _breakers(holders: tuple[Holder, ...], constraints: tuple[Constraint, ...]) -> set[str]:
    """The holders that an exclude names, or that share a value a distinct asks apart (a
    min-distinct names nobody in particular: the reshare places every share anew)."""
    out: set[str] = set()
    for c in constraints:
        values = [h.candidate.attr(c.attr) for h in holders]
        if c.kind == "exclude":
            out |= {h.peer_id for h, v in zip(holders, values, strict=True) if v == c.value}
        elif c.kind == "distinct":
            out |= {h.peer_id for h, v in zip(holders, values, strict=True) if values.count(v) > 1}
    return out


def _renewing(s: Situation, now: int) -> bool:
    """Whether a keyset that allows renewal is due for it: within the margin of its current
    lifetime, and not past it (expired shards are released by nobody, dealt by nobody)."""
    life = s.life()
    return s.renew and life is not None and now <= life[1] and ending(*life, now, s.margin)


def warnings(s: Situation, now: int) -> list[str]:
    """What the authorities are told about a keyset's expiry (see :func:`expiry`)."""
    return expiry(s.keyset_id, s.life(), s.renew, now, s.margin)


def expiry(keyset_id: str, life: tuple[int, int] | None, renew: bool, now: int,
           margin: float = DEFAULT_MARGIN) -> list[str]:
    """A keyset within the expiry ``margin`` of its current lifetime ``life`` (start, end)
    that is not renewed (past its not-after the key is gone for good), or whose renewal is
    overdue (half the margin gone, and still not renewed: its rounds fail)."""
    if life is None or not ending(*life, now, margin):
        return []
    if now > life[1]:
        return [f"keyset {keyset_id} expired at {life[1]}: its shards are no longer released"]
    if not renew:
        return [f"keyset {keyset_id} expires at {life[1]} and is not renewed: past it, the key cannot be "
                "recovered"]
    if ending(*life, now, margin / 2):
        return [f"keyset {keyset_id} expires at {life[1]} and its renewal has not happened yet: see its "
                "trigger-failed entries in the audit log"]
    return []


def leader(authorities: tuple[str, ...], keyset_id: str, epoch: int) -> tuple[str, ...]:
    """The order in which a keyset's authority nodes act on a trigger (the first at once, the
    next ones only if the trigger still holds after their turn's delay): a rotation by keyset
    and epoch, so that no one authority always coordinates."""
    ranked = sorted(authorities)
    if not ranked:
        return ()
    start = (int(keyset_id[:8], 16) + epoch) % len(ranked)
    return tuple(ranked[start:] + ranked[:start])

