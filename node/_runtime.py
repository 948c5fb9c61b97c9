"""The running node's composition root: one trio nursery around the transport,
the services, the background loops and the control socket.

What runs where:

* the services (``_services``): the directory, the custodian, the owner, the
  approvals and the releaser, over one store and one keystore;
* the stream handlers: one per protocol of ``protocol/_wire.py``, each a
  service call;
* the loops: the directory (``_directory_loops``), requests and votes
  (``_approval_loops``) and deliveries (``_outbox_loop``), over ``_links``;
* with ``operator_io``: the control socket (``_control_server``, with the
  table of ``_control_commands``), the run files and the signals.

Time and randomness come from the ``clock`` and ``rng`` handed in; the
transport from the factory. Nothing here knows whether it is libp2p or the
grid's memory network.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import Descriptor, Request, batches, wire

from . import _transport as tx
from ._approval_loops import ApprovalLoops, signed_by_author
from ._audit_log import checkpoint_loop
from ._autopilot import Autopilot
from ._clock import Clock, Rng
from ._control_commands import command_table
from ._control_server import Command, bind_control, serve_control
from ._directory_loops import DirectoryLoops
from ._epoch_batcher import EpochBatcher
from ._epoch_round import Returning, notice_loop
from ._epochs import EpochService
from ._feeds import Feeds
from ._files import write_atomic
from ._home import Home
from ._keyset_fetch import RecordService
from ._keystore import Keystore
from ._links import Links
from ._members import Members, NoNetwork
from ._membership_loops import MembershipLoops
from ._outbox_loop import OutboxLoop
from ._possession import Possession
from ._rules import Rules
from ._rules_loops import RulesLoops
from ._services import VERSION, Approvals, Custodian, Directory, Owner, Rejected, Releaser
from ._store import Store, StoreError
from ._transport import Transport, TransportFactory

log = logging.getLogger("shardnet.node")
REQUEST_KEEP = 7 * 86400  # how long past its expiry a request (and its votes) is kept
PRUNE_EVERY = 3600.0


class NodeRuntime:
    def __init__(self, home: Home, *, keystore: Keystore, transport: TransportFactory,
                 bootstrap: list[str] | None = None, clock: Clock, rng: Rng, store: Store | None = None,
                 operator_io: bool = True, republish_every: float | None = None, autopilot: bool = True) -> None:
        """``store``: the node's store (default: the home's database file, which the node
        closes when it stops; a store handed in is the caller's to close). ``operator_io``:
        the control socket, the run files and signal handling; the grid's nodes go without.
        ``republish_every``: seconds between our descriptor's publications. ``autopilot``:
        run the epoch actions that triggers call for, on the keysets this node is an
        authority of (``_autopilot``)."""
        self.home = home
        self.cfg = home.config()
        self.keystore = keystore
        self.transport = transport
        self.key = keystore.signer
        self.clock = clock
        self.rng = rng
        self.bootstrap = list(bootstrap or [])
        self.store = store if store is not None else home.open_store()
        self._own_store = store is None
        self.operator_io = operator_io
        self.republish_every = republish_every
        self.peer_id = home.peer_id()
        try:
            self.members = Members.of(self.store, self.key)
        except NoNetwork:
            if self._own_store:
                self.store.close()
            raise
        self.directory = Directory(self.store, self.peer_id, admits=self.admits)
        self.limits = home.limits()
        self.custodian = Custodian(self.store, keystore, self.limits)
        self.rules = Rules(self.store, self.key)
        self.owner = Owner(self.store, keystore, self.directory, self.members, rng, self.rules)
        self.approvals = Approvals(self.store, self.key, eligible=self.admits_member,
                                   revoked=self.rules.revoked_requester, limits=self.limits)
        self.records = RecordService(self.store, keystore, self.members, clock, rng)
        self.epochs = EpochService(self.store, keystore, self.members, rng, self.rules)
        self.epoch_rounds: set[str] = set()  # keysets this node coordinates a round of now
        self.autopilot = Autopilot(self) if autopilot else None
        if self.autopilot is not None:
            pilot = self.autopilot
            self.rules.on_applied = lambda keyset_id: pilot.wake()
        self.feeds = Feeds(self.store, self.key)
        self.releaser = Releaser(self.store, keystore, self.approvals, self.members, self.rules,
                                 threat_level=self.threat_level, rng=rng)
        self.started = 0.0
        self._stop = trio.Event()
        # Made in run(), once the transport is up.
        self.net: Transport
        self.links: Links
        self.peering: DirectoryLoops
        self.gossip: ApprovalLoops
        self.outbox: OutboxLoop
        self.membership: MembershipLoops
        self.rules_loops: RulesLoops
        self.epoch_batcher: EpochBatcher
        self.returning: Returning

    def now(self) -> int:
        return int(self.clock())

    def _connected(self, peer: str) -> None:
        """``peer`` is reachable (again): what is owed to it goes out now."""
        self.outbox.peer_back(peer)
        self.returning.back(peer)

    def admits_member(self, peer: str) -> bool:
        """Whether ``peer`` holds an admission now (an authority alone does not)."""
        return self.members.admission(peer, self.now()) is not None

    def admits(self, peer: str) -> bool:
        """Whether the network admits ``peer`` now (in any role, or as an authority)."""
        return self.members.may_connect(peer, self.now())

    def threat_level(self) -> int:
        """The operator's (`shardnet threat --level`) or the feeds', whichever is higher."""
        raw = self.store.get_kv("threat_level")
        return max(int(raw) if raw else 0, self.feeds.threat_level(self.now()))

    # -- lifecycle ------------------------------------------------------------------

    def _wire(self, net: Transport) -> None:
        self.net = net
        self.links = Links(net, self.directory, admits=self.admits)
        self.gossip = ApprovalLoops(self.approvals, self.links, self.clock)
        possession = Possession(self.store, self.members, self.links, self.key, self.rng, self.clock, self.peer_id)
        self.outbox = OutboxLoop(self.store, self.owner, self.custodian, self.links, self.clock, self.peer_id,
                                 possession)
        self.membership = MembershipLoops(self.members, self.links, self.clock, on_admitted=self.outbox.peer_back)
        self.rules_loops = RulesLoops(self.rules, self.links, self.clock, self.rng)
        self.epoch_batcher = EpochBatcher(self.links)
        self.returning = Returning()
        self.peering = DirectoryLoops(self.directory, self.links, describe=self._descriptor, clock=self.clock,
                                      rng=self.rng, bootstrap=self.bootstrap,
                                      on_readdressed=self.outbox.peer_back, on_connected=self._connected,
                                      on_new_peer=self._new_peer,
                                      first_pull=self.membership.pull_from, on_outsiders=self.membership.gate,
                                      member=lambda: self.members.view.may_connect(self.peer_id, self.now()))
        if self.republish_every is not None:
            self.peering.republish_every = self.republish_every

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listen = list(self.cfg.get("listen") or ["/ip4/127.0.0.1/tcp/0"])
        control = None
        if self.operator_io:
            self.home.run_dir.mkdir(mode=0o700, exist_ok=True)
            control = bind_control(self.home)
        try:
            async with self.transport(self.keystore.transport_seed(), listen, self.members.prefix) as net:
                self._wire(net)
                self.started = trio.current_time()
                self.peering.publish_self()
                if self.operator_io:
                    write_atomic(self.home.addrs_file, json.dumps(
                        {"peer_id": self.peer_id, "addrs": net.listen_addrs, "pid": os.getpid()}).encode(),
                        0o644, overwrite=True)
                handlers = {wire.DELIVER: self._on_deliver, wire.DIRECTORY: self._on_directory_pull,
                            wire.DIRECTORY_DELTA: self._on_directory_delta,
                            wire.RELEASE: self._on_release, wire.RELEASE_V1: self._on_release_v1,
                            wire.KEYSET: self._on_keyset_notice,
                            wire.SYNC: self._on_sync, wire.POSSESSION: self._on_possession,
                            wire.KEYSET_FETCH: self._on_keyset_fetch, wire.EPOCH: self._on_epoch,
                            wire.RULES: self.rules_loops.serve}
                for proto, handler in handlers.items():
                    net.serve(proto, self._admitted_only(handler), wire.REQUEST_TIMEOUT)
                net.serve(wire.MEMBERSHIP, self._on_membership_pull, wire.REQUEST_TIMEOUT)
                member_sub = await net.subscribe(wire.MEMBERSHIP_TOPIC, self.membership.validate)
                dir_sub = await net.subscribe(wire.DIRECTORY_TOPIC, self._from_members(self.peering.validate))
                req_sub = await net.subscribe(wire.REQUEST_TOPIC, self._from_members(
                    signed_by_author(self.approvals.parse_request)))
                vote_sub = await net.subscribe(wire.VOTE_TOPIC, self._from_members(
                    signed_by_author(self.approvals.parse_vote)))
                rule_subs = [await net.subscribe(topic, self._from_members(self.rules_loops.validate))
                             for topic in (wire.POLICY_TOPIC, wire.REVOCATION_TOPIC)]
                batch_sub = await net.subscribe(wire.RULES_BATCH_TOPIC,
                                                self._from_members(self.rules_loops.validate_batch))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.membership.drain, member_sub)
                    nursery.start_soon(self.membership.gate_loop)
                    nursery.start_soon(self.peering.drain, dir_sub)
                    nursery.start_soon(self.gossip.drain_requests, req_sub)
                    nursery.start_soon(self.gossip.drain_votes, vote_sub)
                    for sub in rule_subs:
                        nursery.start_soon(self.rules_loops.drain, sub)
                    nursery.start_soon(self.rules_loops.drain_batches, batch_sub)
                    nursery.start_soon(self.rules_loops.pull_loop)
                    nursery.start_soon(self.peering.publish_loop)
                    nursery.start_soon(self.peering.peers_loop)
                    nursery.start_soon(self.outbox.run)
                    nursery.start_soon(self.epoch_batcher.run)
                    if self.autopilot is not None:
                        nursery.start_soon(self.autopilot.run)
                    nursery.start_soon(self.feeds.run, self.clock)
                    nursery.start_soon(notice_loop, self)
                    nursery.start_soon(self._prune_loop)
                    nursery.start_soon(checkpoint_loop, self.store, self.key, self.peer_id)
                    if control is not None:
                        nursery.start_soon(serve_control, control, self.commands(), nursery)
                        nursery.start_soon(self._signals)
                    log.info("node %s (%s, %s) listening on %s", self.cfg["name"], self.cfg["country"],
                             self.peer_id, ", ".join(net.listen_addrs))
                    task_status.started()
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
        finally:
            if control is not None:
                control.socket.close()
                for f in (self.home.control_socket, self.home.addrs_file):
                    try:
                        f.unlink()
                    except FileNotFoundError:
                        pass
            if self._own_store:
                self.store.close()
            log.info("node stopped")

    def stop(self) -> None:
        self._stop.set()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for signum in sigs:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                self.stop()
                return

    def _descriptor(self, seq: int) -> Descriptor:
        return Descriptor.make(
            self.key, addrs=self.net.listen_addrs, hpke=self.keystore.hpke_public(),
            name=self.cfg["name"], country=self.cfg["country"], city=self.cfg.get("city", ""),
            org=self.cfg.get("org", ""), version=VERSION, seq=seq,
        )

    # -- what the loops and commands share --------------------------------------------

    async def _new_peer(self, peer: str) -> None:
        await self.gossip.sync_from(peer)
        await self.rules_loops.on_new_peer(peer)

    def connected(self) -> list[str]:
        return self.links.connected()

    @property
    def votes_changed(self) -> trio.Event:
        return self.gossip.votes_changed

    def wake_voters(self) -> None:
        self.gossip.wake_voters()

    def live(self) -> dict[str, Any]:
        return {"addrs": self.net.listen_addrs, "peers": self.connected(),
                "uptime_s": trio.current_time() - self.started,
                "epoch_asks": {"requests": self.epoch_batcher.requests, "frames": self.epoch_batcher.frames}}

    def commands(self) -> dict[str, Command]:
        """The control socket's command table."""
        return command_table(self)

    async def ask_release(self, peer: str, request: Request, votes: list[bytes]) -> bytes:
        """One release round trip to ``peer`` (or to ourselves, locally)."""
        frame = p.encode([wire.RELEASE_ASK_TAG, 1, request.signed, votes])
        if peer == self.peer_id:
            return self.releaser.handle(self.peer_id, frame, self.now(), no_shard=True)
        try:
            return await self.links.reach_and_request(peer, wire.RELEASE, frame)
        except tx.StreamOpenError:  # a custodian from before signed no-shard answers
            return await self.links.reach_and_request(peer, wire.RELEASE_V1, frame)

    # -- stream handlers: one service call each ----------------------------------------

    def _admitted_only(self, handler: tx.Handler) -> tx.Handler:
        async def gated(remote: str, frame: bytes) -> bytes:
            if not self.admits(remote):
                raise tx.RequestRejected(f"not admitted to network {self.members.prefix}")
            return await handler(remote, frame)
        return gated

    def _from_members(self, validator: tx.Validator) -> tx.Validator:
        def check(author: str, data: bytes) -> bool:
            return self.admits(author) and validator(author, data)
        return check

    async def _on_possession(self, remote: str, frame: bytes) -> bytes:
        try:
            return p.possession.answer(frame, self.keystore.openers(), challenger=remote, key=self.key)
        except p.ShardnetError as exc:
            raise tx.RequestRejected(f"cannot answer the challenge: {exc}") from None

    async def _on_keyset_fetch(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.records.serve(remote, frame)
        except p.ShardnetError as exc:
            raise tx.RequestRejected(str(exc)) from None

    async def _on_membership_pull(self, remote: str, frame: bytes) -> bytes:
        return self.membership.serve_pull(remote, frame)

    async def _on_deliver(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.custodian.handle_delivery(remote, frame, self.now())
        except Rejected as exc:
            log.info("delivery from %s rejected: %s", remote, exc)
            raise tx.RequestRejected(str(exc)) from None

    async def _on_directory_pull(self, remote: str, frame: bytes) -> bytes:
        return self.directory.pull_reply(wire.PULL)

    async def _on_directory_delta(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.directory.pull_reply(frame)
        except p.ShardnetError as exc:
            raise tx.RequestRejected(str(exc)) from None

    async def _on_sync(self, remote: str, frame: bytes) -> bytes:
        return self.approvals.sync_reply(self.now())

    async def _on_keyset_notice(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.approvals.accept_keyset_notice(remote, frame, self.now())
        except Rejected as exc:
            raise tx.RequestRejected(str(exc)) from None

    async def _on_epoch(self, remote: str, frame: bytes) -> bytes:
        try:
            if batches.is_epoch_batch(frame):
                return await self.epochs.handle_batch(remote, frame, self.now)
            return self.epochs.handle(remote, frame, self.now())
        except Rejected as exc:
            log.info("epoch ask from %s refused: %s", remote, exc)
            raise tx.RequestRejected(str(exc)) from None

    async def _prune_loop(self) -> None:
        """Forget requests (and their votes), and the records of keysets this node only
        approves for, a week after they expired, once an hour: its tables hold what is live
        and what it saw lately, not all of history."""
        while True:
            before = int(self.clock()) - REQUEST_KEEP
            try:
                requests = self.store.prune_requests(before)
                keysets = self.approvals.forget_expired(before)
            except (StoreError, sqlite3.Error) as exc:  # a busy or damaged database: next hour, again
                log.warning("could not forget expired requests and keysets: %s", exc)
                requests = keysets = 0
            if requests or keysets:
                log.info("forgot %d requests and %d keyset records that expired over %d days ago", requests,
                         keysets, REQUEST_KEEP // 86400)
            await trio.sleep(PRUNE_EVERY)

    async def _on_release(self, remote: str, frame: bytes, *, no_shard: bool = True) -> bytes:
        try:
            return self.releaser.handle(remote, frame, self.now(), no_shard=no_shard)
        except Rejected as exc:
            log.info("release to %s refused: %s", remote, exc)
            raise tx.RequestRejected(str(exc)) from None

    async def _on_release_v1(self, remote: str, frame: bytes) -> bytes:
        """An asker from before signed no-shard answers: it gets the refusal it knows."""
        return await self._on_release(remote, frame, no_shard=False)
