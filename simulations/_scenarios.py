"""The bundled scenarios (``shardnet sim list``; ``shardnet sim run NAME``).

Each is seeded through ``run.rng`` and checks its own outcomes; see
``_scenario`` for the API and ``_cluster`` for the bounds.
"""

from __future__ import annotations

import trio

from shardnet.node._control_server import ControlError
from shardnet.protocol import placement as node_placement

from . import _geo_placement as gp
from ._byzantine import forge_revocation, lie_in_receipts, lie_in_releases
from ._cluster import Cluster, Reconstruction
from ._scenario import Run, Scenario, ScenarioError

WAIT = 60.0  # seconds a reconstruction or a spread may take before it counts as missed


def _key(run: Run, label: str) -> bytes:
    return f"{label} {run.rng.getrandbits(64):016x}".encode().ljust(32, b".")


def _pick(run: Run, avoid: frozenset[int] = frozenset()) -> int:
    """A node other than the authority (node 0) and ``avoid``, drawn from the run's RNG."""
    pool = [i for i in range(1, len(run.cluster.peers)) if i not in avoid]
    if not pool:
        raise ScenarioError("the topology is too small for this scenario")
    return run.rng.choice(pool)


async def _imported(run: Run, label: str) -> tuple[int, str, list[int]]:
    """A node (drawn) imports a t-of-n key under the run's placement: the owner, the keyset and
    its holders, each marked for the world map."""
    owner = _pick(run)
    run.mark(owner, role="owner")
    ks = await run.cluster.import_key(owner, _key(run, label), run.params["t"], run.params["n"],
                                      gp.parse(run.params["placement"]))
    holders = await run.cluster.holders(owner, ks)
    for h in holders:
        run.mark(h, role="holder")
    return owner, ks, holders


async def latency(run: Run) -> None:
    """Reconstruction latency against its bound, across placements."""
    c = run.cluster
    t, n, reps = run.params["t"], run.params["n"], run.params["reps"]
    requester = _pick(run)
    run.mark(requester, role="requester")
    city = c.topology.sites[requester].city
    templates = [x.strip() for x in run.params["placements"].split(";") if x.strip()]
    total = len(templates) * reps
    done = 0
    for template in templates:  # labelled with the template: near:{city} is one group across seeds
        text = template.replace("{city}", city)
        pl = gp.parse(text)
        for rep in range(reps):
            try:
                ks = await c.import_key(requester, _key(run, text), t, n, pl, seed=run.seed * 1000 + rep)
            except (node_placement.PlacementError, ControlError) as exc:
                if isinstance(exc, ControlError) and exc.exit_code != 2:  # a node process's usage error is 2
                    raise
                run.outcome(f"placement {text} can be met", False, str(exc))
                done += reps - rep
                run.progress("reconstructions", done, total)
                break
            for h in await c.holders(requester, ks):
                run.mark(h, role="holder")
            got = await c.reconstruct(requester, ks, within=WAIT)
            run.reconstruction(got, placement=template)
            if not got.ok:
                run.outcome(f"reconstruction under {text}", False, got.error)
            done += 1
            run.progress("reconstructions", done, total)
    missed = [m for m in run.measurements if m.seconds is None]
    run.outcome("every reconstruction succeeded", bool(run.measurements) and not missed,
                f"{len(missed)} of {len(run.measurements)} failed" if missed or not run.measurements else "")


async def loss(run: Run) -> None:
    """Custodians crash one by one, up to n-t and one past; then all restart."""
    c = run.cluster
    t, n = run.params["t"], run.params["n"]
    owner, ks, holders = await _imported(run, "loss")
    order = [h for h in holders if h != owner]  # the owner asks: it stays up
    run.rng.shuffle(order)
    down: list[int] = []
    for k in range(n - t + 2):
        if k:
            victim = order[k - 1]
            await c.crash(victim)
            down.append(victim)
            run.mark(victim, state="crashed")
        got = await c.reconstruct(owner, ks, within=run.params["wait"])
        run.reconstruction(got, down=k)
        if k <= n - t:
            run.outcome(f"the key comes back with {k} of {n} custodians down", got.ok, got.error)
        else:
            clean = not got.ok and bool(got.error)
            run.outcome(f"with {k} down (past n-t = {n - t}) the round fails cleanly", clean,
                        got.error if clean else "it did not fail")
        run.progress("losses", k + 1, n - t + 2)
    for j, victim in enumerate(down, 1):
        await c.restart(victim)
        run.mark(victim, state="restarted")
        run.progress("restarts", j, len(down))
    got = await _settled_reconstruct(c, owner, ks, run.params["wait"])
    run.reconstruction(got, down="restarted")
    run.outcome("the key comes back once every custodian has restarted", got.ok, got.error)


async def _settled_reconstruct(c: Cluster, requester: int, keyset: str, wait: float) -> Reconstruction:
    """A reconstruction once restarted nodes have had time to reconnect (a directory round)."""
    await c.settle()
    return await c.reconstruct(requester, keyset, within=wait)


async def continent(run: Run) -> None:
    """A whole continent is cut off from the rest by a partition, then healed."""
    c = run.cluster
    t, n = run.params["t"], run.params["n"]
    sites = c.topology.sites
    owner, ks, holders = await _imported(run, "continent")
    by_continent: dict[str, list[int]] = {}
    for h in holders:
        by_continent.setdefault(sites[h].continent, []).append(h)
    # The continent holding the most shards, but not the owner's: the worst loss it can see.
    away = max((k for k in by_continent if k != sites[owner].continent),
               key=lambda k: (len(by_continent[k]), k), default=None)
    if away is None:
        raise ScenarioError("every holder is on the owner's continent: use a placement that spreads them")
    inside = {i for i, s in enumerate(sites) if s.continent == away}
    outside = set(range(len(sites))) - inside
    c.partition(inside, outside)
    for i in inside:
        run.mark(i, state="cut off")
    left = len([h for h in holders if h not in inside])
    got = await c.reconstruct(owner, ks, within=run.params["wait"])
    run.reconstruction(got, continent_off=away)
    expect = left >= t
    run.outcome(f"{away} cut off ({len(holders) - left} of {n} holders there): the key "
                f"{'comes back' if expect else 'cannot come back and the round fails cleanly'}",
                got.ok == expect and (got.ok or bool(got.error)), got.error)
    c.heal()
    for i in inside:
        run.mark(i, state="healed")
    got = await c.reconstruct(owner, ks, within=run.params["wait"])
    run.reconstruction(got, continent_off="healed")
    run.outcome("after the partition heals the key comes back", got.ok, got.error)


async def revocation(run: Run) -> None:
    """A membership revocation reaches every node, including nodes that were down when it
    was made."""
    c = run.cluster
    nodes = len(c.peers)
    victim = _pick(run)
    run.mark(victim, role="revoked")
    offline = sorted(run.rng.sample([i for i in range(1, nodes) if i != victim],
                                    min(run.params["offline"], max(0, nodes - 2))))
    for i in offline:
        await c.crash(i)
        run.mark(i, state="down at the revocation")
    online = [i for i in range(1, nodes) if i != victim and i not in offline]
    bounds = c.gossip_bounds(0, await c.mesh())
    await c.revoke_member(0, victim)
    arrived = await c.spread(0, lambda i: c.revoked_on(i, c.peers[victim]), targets=online, within=WAIT)
    for i in online:
        run.measure("revocation", arrived.get(i), bounds.get(i), node=i, when="online")
    points = sorted(arrived.values())
    run.series("revocation reached (online nodes)", [(s, (k + 1) / len(online)) for k, s in enumerate(points)])
    run.series("revocation bound (overlay shortest paths)",
               [(s, (k + 1) / len(online)) for k, s in enumerate(sorted(bounds.get(i, 0.0) for i in online))])
    if online:
        last = max(arrived.values(), default=None)
        bound = max((bounds[i] for i in online if i in bounds), default=None)
        run.measure("revocation, last node", last if len(arrived) == len(online) else None, bound, when="online")
    run.outcome(f"the revocation reached every online node ({len(arrived)} of {len(online)})",
                len(arrived) == len(online))
    for i in offline:
        await c.restart(i)
        run.mark(i, state="restarted")
    late = await c.spread(0, lambda i: c.revoked_on(i, c.peers[victim]), targets=offline, within=WAIT * 5)
    for i in offline:
        run.measure("revocation", late.get(i), None, node=i, when="after restart")
    run.outcome(f"nodes down at the time learnt it after restarting ({len(late)} of {len(offline)})",
                len(late) == len(offline))


async def byzantine(run: Run) -> None:
    """Byzantine custodians, each fault up to what the keyset tolerates: holders answer with
    wrong partials (``liars``) or sign receipts for shards they do not keep
    (``receipt_liars``), up to n-t of both; approvers vote both ways (``double_voters``, up
    to the approvers past the quorum), and a custodian forges a revocation of a holder
    (``forgers``). Every liar and double voter is named, the forgery takes hold nowhere,
    and the key comes back. The holders are placed here, with the node's own solver, so
    that the receipt liars can be among them before their shards arrive."""
    c = run.cluster
    t, n = run.params["t"], run.params["n"]
    lying, lost = run.params["liars"], run.params["receipt_liars"]
    if lying + lost > n - t:
        raise ScenarioError(f"at most {n - t} liars and receipt liars together (n-t)")
    owner = _pick(run)
    run.mark(owner, role="owner")
    sites = c.topology.sites
    try:
        names = gp.choose(c.topology, gp.parse(run.params["placement"]), n, requester=sites[owner],
                       candidates=[s for i, s in enumerate(sites) if i != owner], seed=run.seed)
    except node_placement.PlacementError as exc:
        raise ScenarioError(f"--param placement: {exc}") from None
    by_name = {s.name: i for i, s in enumerate(sites)}
    chosen = [by_name[name] for name in names]
    lost_receipts = sorted(run.rng.sample(chosen, lost))
    for i in lost_receipts:
        lie_in_receipts(c.nodes[i])
    ks = await c.import_key(owner, _key(run, "byzantine"), t, n, gp.parse(run.params["placement"]),
                            custodians=chosen)
    holders = await c.holders(owner, ks)
    for h in holders:
        run.mark(h, role="holder")
    others = [h for h in holders if h not in lost_receipts]
    approvers, quorum = await c.approval_rule(ks)
    voters = [a for a in approvers if a != owner]
    if run.params["double_voters"] > min(len(approvers) - quorum, len(voters)):
        raise ScenarioError(f"at most {min(len(approvers) - quorum, len(voters))} double voters here "
                            f"(the approvers past the quorum)")
    liars = sorted(run.rng.sample(others, lying))
    for i in liars:
        lie_in_releases(c.nodes[i])
    for i in liars + lost_receipts:
        run.mark(i, role="liar")
    double = sorted(run.rng.sample(voters, run.params["double_voters"]))
    for i in double:
        run.mark(i, role="liar")
    forgers = [i for i in range(1, len(c.peers)) if i != owner and i not in holders][:run.params["forgers"]]
    if len(forgers) < run.params["forgers"]:
        raise ScenarioError(f"at most {len(forgers)} forgers here (custodians that are neither owner nor holder)")
    victim = others[0] if others else owner
    forged = []
    for i in forgers:
        forged.append((i, await forge_revocation(c.nodes[i], c.peers[victim])))
        run.mark(i, role="liar")
    got = await c.reconstruct(owner, ks, within=run.params["wait"], double_voters=frozenset(double))
    run.reconstruction(got, liars=len(liars), receipt_liars=len(lost_receipts), double_voters=len(double))
    run.outcome(f"the key comes back with {len(liars)} holders lying in releases, {len(lost_receipts)} in receipts "
                f"and {len(double)} double voters", got.ok, got.error)
    named = {c.index(p) for p in got.liars}
    run.outcome("every liar is named, and no one else", named == set(liars) | set(lost_receipts),
                f"named {sorted(named)}, lying {sorted(liars + lost_receipts)}")
    if got.ok and double:
        async def void_at(i: int) -> bool:
            return await c.voided(i, got.request) >= set(double)

        seen = await c.spread(owner, void_at, targets=[owner], within=run.params["wait"])
        void = await c.voided(owner, got.request)
        run.outcome("every double voter is void at the requester, with both votes as evidence, and no one else",
                    bool(seen) and void == set(double), f"void {sorted(void)}, double voters {double}")
    if forgers:
        took = [i for i in range(len(c.peers)) if c.up(i) and await c.revoked_on(i, c.peers[victim])]
        # What the gossip's validators say of it, asked directly (a forgery that never left
        # its forger would pass the first check alone):
        passed = [i for i in range(len(c.peers)) for f, data in forged
                  if c.up(i) and i != f and c.nodes[i].membership.validate(c.peers[f], data)]
        run.outcome(f"a revocation forged by {len(forgers)} custodian(s) who are no authority took hold on no node, "
                    "and every node's gossip validator refuses it", not took and not passed,
                    f"node(s) {took} took it, {passed} would pass it on" if took or passed else "")

def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(";") if x.strip()]
    except ValueError:
        rates = []
    if not rates or not all(0 <= r < 1 for r in rates):
        raise ScenarioError(f"--param loss={text!r}: loss rates from 0 to below 1, split by ';' (0;0.01;0.05)")
    return rates


async def links(run: Run) -> None:
    """Reconstructions over slow and lossy links: every link loses segments at each rate in
    turn (TCP retransmits them, so a loss costs a retransmission timeout: ``_linkfaults``)
    and takes ``extra_ms`` more each way. The bound counts the extra, not the losses."""
    c = run.cluster
    rates = _rates(run.params["loss"])
    owner, ks, _ = await _imported(run, "links")
    reps = run.params["reps"]
    for k, rate in enumerate(rates):
        c.degrade(extra_s=run.params["extra_ms"] / 1000, loss=rate)
        failed = []
        for rep in range(reps):
            got = await c.reconstruct(owner, ks, within=run.params["wait"])
            run.reconstruction(got, loss=rate)
            if not got.ok:
                failed.append(got.error)
            run.progress("reconstructions", k * reps + rep + 1, len(rates) * reps)
        run.outcome(f"every reconstruction succeeded with {rate:g} loss", not failed,
                    f"{len(failed)} of {reps} failed: {failed[0]}" if failed else "")
    c.restore()


class _Churn:
    """Nodes leave (crash) and come back (restart, with their disk): every ``60/rate`` s on
    average (exponential gaps) a node is picked, and leaves, or comes back if it was away,
    within :meth:`may_leave`. A reshare's incoming holders count as holders once it commits:
    one that left during the round may make the round abort, which ``epochs`` allows."""

    def __init__(self, run: Run, owner: int, keyset: str) -> None:
        self.run, self.c, self.owner, self.keyset = run, run.cluster, owner, keyset
        self.pool = [i for i in range(1, len(self.c.peers)) if i != owner]
        self.away: set[int] = set()
        self.left = self.rejoined = 0
        self.stop = trio.Event()

    async def holders_away(self) -> int:
        return len(self.away & set(await self.c.holders(self.owner, self.keyset)))

    async def may_leave(self, i: int) -> bool:
        """Whether ``i`` may leave now: never more than n-t holders away, nor more approvers
        than those past the quorum (the approvers stay the first epoch's: a reshare moves
        the holders, not them)."""
        t, n = self.run.params["t"], self.run.params["n"]
        approvers, quorum = await self.c.approval_rule(self.keyset)
        if i in await self.c.holders(self.owner, self.keyset) and await self.holders_away() >= n - t:
            return False
        return i not in approvers or len(self.away & set(approvers)) < len(approvers) - quorum

    async def churning(self) -> None:
        """Until :attr:`stop` is set; then every node away comes back."""
        for _ in range(100_000):  # bounded; ends when stop is set
            with trio.move_on_after(self.run.rng.expovariate(self.run.params["rate"] / 60)):
                await self.stop.wait()
            if self.stop.is_set():
                break
            i = self.run.rng.choice(self.pool)
            with trio.CancelScope(shield=True):  # a crash or restart is never left half done
                if i in self.away:
                    await self.c.restart(i)
                    self.away.discard(i)
                    self.rejoined += 1
                    self.run.mark(i, state="rejoined")
                elif await self.may_leave(i):
                    await self.c.crash(i)
                    self.away.add(i)
                    self.left += 1
                    self.run.mark(i, state="left")
        for i in sorted(self.away):
            await self.c.restart(i)
        self.away.clear()

    def summary(self) -> str:
        return f"{self.left} left, {self.rejoined} rejoined"


async def churn(run: Run) -> None:
    """Custodians leave and come back (``_Churn``) while the owner asks for its key again and
    again; with at most n-t holders away, every reconstruction must succeed (a holder back
    from away may still be reconnecting: the round waits for it)."""
    c = run.cluster
    reps = run.params["reps"]
    owner, ks, _ = await _imported(run, "churn")
    ch = _Churn(run, owner, ks)
    failed = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ch.churning)
        for rep in range(reps):
            down = await ch.holders_away()
            got = await c.reconstruct(owner, ks, within=run.params["wait"])
            run.reconstruction(got, holders_away=down)
            if not got.ok:
                failed.append(got.error)
            run.progress("reconstructions", rep + 1, reps)
            await trio.sleep(run.params["gap"])
        ch.stop.set()
    moved = ch.left + ch.rejoined
    run.outcome(f"every reconstruction succeeded under churn ({ch.summary()})", not failed and moved > 0,
                f"{len(failed)} of {reps} failed: {failed[0]}" if failed else "" if moved else "no one moved")


async def epochs(run: Run) -> None:
    """Refresh and reshare under churn (``_Churn``): the owner, the keyset's authority, runs
    each round ``reps`` times while custodians leave and come back. A round either finishes
    (a new epoch) or aborts with the old epoch still standing; the key must come back after
    every one, so it is never orphaned."""
    c = run.cluster
    reps = run.params["reps"]
    owner, ks, _ = await _imported(run, "epochs")
    ch = _Churn(run, owner, ks)
    failed: list[str] = []
    aborts: list[str] = []
    ends = {"done": 0, "aborted": 0}
    actions = [a for a in ("refresh", "reshare") for _ in range(reps)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ch.churning)
        for k, action in enumerate(actions):
            down = await ch.holders_away()
            before, done_before = await c.epoch(owner, ks), ends["done"]
            t0 = c.now()
            try:
                await c.command(owner, action, {"keyset": ks, "timeout": run.params["wait"]})
                ends["done"] += 1
                run.measure("epoch round", c.now() - t0, None, action=action, holders_away=down)
            except ControlError as exc:
                if "aborted" not in str(exc):  # a usage error, not the round's end
                    raise ScenarioError(f"{action}: {exc}") from None
                ends["aborted"] += 1  # the old epoch stands (a "missed" round in the table)
                aborts.append(str(exc))
                run.measure("epoch round", None, None, action=action, holders_away=down)
            want = before + 1 if ends["done"] > done_before else before  # a new epoch, or the old one stands
            now_at = await c.epoch(owner, ks)
            if now_at != want:
                failed.append(f"after a {action}: epoch {now_at}, was {before}")
            got = await c.reconstruct(owner, ks, within=run.params["wait"])
            run.reconstruction(got, after=action)
            if not got.ok:
                failed.append(f"after a {action}: {got.error}")
            run.progress("epoch rounds", k + 1, len(actions))
        ch.stop.set()
    run.outcome(f"the key came back after every refresh and reshare under churn ({ch.summary()}; "
                f"{ends['done']} rounds finished, {ends['aborted']} aborted)", not failed and ch.left > 0,
                failed[0] if failed else "" if ch.left else "no one left")
    run.outcome("at least one round finished under churn", ends["done"] > 0,
                f"first abort: {aborts[0]}" if aborts else "")

async def bulk(run: Run) -> None:
    """Bulk re-encryption after a revocation. Node 0, the network's authority, owns ``keysets``
    t-of-n keysets and is their sole policy authority; a custodian (drawn) holds a share of
    every one. One ``revoke`` of that custodian, for all of them, makes node 0's autopilot
    reshare each keyset away from it, in batched, pipelined rounds. Each keyset's time is from
    the revoke until its owner lists holders without the revoked custodian; the first and the
    last keyset to move must still give their key back."""
    c = run.cluster
    t, n, k = run.params["t"], run.params["n"], run.params["keysets"]
    victim = _pick(run)
    run.mark(0, role="owner")
    run.mark(victim, role="revoked")
    others = [i for i in range(1, len(c.peers)) if i != victim]
    if len(others) < n:
        raise ScenarioError(f"bulk needs {n + 2} custodians at least: the owner, the revoked one, and "
                            f"{n} to reshare onto")
    keysets = []
    for j in range(k):
        holders = [victim, *run.rng.sample(others, n - 1)]
        keysets.append(await c.import_key(0, _key(run, f"bulk {j}"), t, n, gp.parse(""), custodians=holders))
        run.progress("imports", j + 1, k)
    t0 = c.now()
    await c.command(0, "revoke", {"subject": "custodian", "value": c.peers[victim], "reason": "scenario"})
    moved: dict[str, float] = {}
    for _ in range(int(run.params["wait"] / 0.1) + 1):
        for ks in keysets:
            if ks not in moved and victim not in await c.holders(0, ks):
                moved[ks] = c.now() - t0
        run.progress("keysets resharded", len(moved), k)
        if len(moved) == k or c.now() - t0 > run.params["wait"]:
            break
        await trio.sleep(0.1)
    for ks in keysets:
        run.measure("keyset resharded", moved.get(ks), None)
    run.measure("last keyset resharded", max(moved.values()) if len(moved) == k else None, None)
    run.outcome(f"every keyset was resharded away from the revoked custodian ({len(moved)} of {k} within "
                f"{run.params['wait']:g} s)", len(moved) == k)
    ends = sorted(moved, key=moved.__getitem__)
    for ks in dict.fromkeys([*ends[:1], *ends[-1:]]):
        got = await c.reconstruct(0, ks, within=WAIT)
        run.reconstruction(got, after="bulk reshare")
        run.outcome(f"keyset {ks[:12]}, resharded after {moved[ks]:.2f} s: the key comes back", got.ok, got.error)


SCENARIOS = {s.name: s for s in (
    Scenario("latency", "reconstruction latency against its bound, across placements (random, distinct:country, "
             "near:CITY, max-rtt:MS)", latency, nodes=20,
             params={"t": 3, "n": 5, "reps": 3,
                     "placements": "random;distinct:country;near:{city};max-rtt:150,distinct:country"}),
    Scenario("loss", "custodians crash one by one up to n-t and one past, then restart", loss, nodes=12,
             params={"t": 3, "n": 5, "placement": "distinct:country", "wait": 30.0}),
    Scenario("continent", "the continent holding the most shards is cut off by a partition, then healed",
             continent, nodes=20, params={"t": 3, "n": 5, "placement": "distinct:continent", "wait": 30.0}),
    Scenario("revocation", "a membership revocation reaches every node, and nodes that were down learn it "
             "when they restart", revocation, nodes=30, params={"offline": 3}),
    Scenario("byzantine", "wrong partials, receipts for shards not kept, double votes and a forged revocation: "
             "each liar named, the forgery refused, the key back",
             byzantine, nodes=12, params={"t": 3, "n": 5, "liars": 1, "receipt_liars": 1, "double_voters": 1,
                                          "forgers": 1,
                                          "placement": "distinct:country", "wait": 30.0},
             modes=("virtual", "inprocess")),  # it tampers with node runtimes in this process
    Scenario("links", "reconstructions over slow and lossy links (TCP retransmits a lost segment after a timeout)",
             links, nodes=12, params={"t": 3, "n": 5, "reps": 3, "loss": "0;0.1;0.3", "extra_ms": 0.0,
                                      "placement": "distinct:country", "wait": 60.0}),
    Scenario("churn", "custodians leave and rejoin at a rate while the key is asked for, at most n-t holders away",
             churn, nodes=12, params={"t": 3, "n": 5, "reps": 8, "rate": 20.0, "gap": 2.0,
                                      "placement": "distinct:country", "wait": 60.0}),
    Scenario("epochs", "refresh and reshare rounds under churn: each finishes or aborts, the key always comes back",
             epochs, nodes=12, params={"t": 3, "n": 5, "reps": 3, "rate": 60.0,
                                       "placement": "distinct:country", "wait": 60.0}),
    Scenario("bulk", "a custodian holding a share of many keysets is revoked: the autopilot reshares every one "
             "away from it, batched and pipelined, and the keys still come back", bulk, nodes=12,
             params={"t": 2, "n": 3, "keysets": 20, "wait": 300.0}, autopilot=True),
)}
