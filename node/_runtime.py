"""The running node: one trio nursery around the libp2p host, the services,
the background loops and the control socket.

Loops (all bounded, all in the node's nursery):

* directory: publish our signed descriptor at start and every ``REPUBLISH`` s;
  drain the directory topic; pull every peer's directory when we first see it
  and every ``PULL_EVERY`` s from a few connected peers (anti-entropy, because
  gossip is lossy); dial custodians we learn about.
* outbox: deliver pending shards, with exponential back-off per custodian; a
  custodian that is offline gets its shard when it comes back, also after we
  restart (the outbox is in SQLite).
* control: a Unix socket (mode 0600) in ``DIR/run`` that the CLI talks to.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import Added, Descriptor, Request, Vote, outbox, wire

from . import _api
from . import _transport as tx
from ._clock import Clock, Rng
from ._control_server import Command, Emit, bind_control, serve_control
from ._files import write_atomic
from ._home import Home
from ._keystore import Keystore
from ._reconstruct import reconstruct
from ._services import (
    VERSION,
    Approvals,
    Custodian,
    Directory,
    Owner,
    Rejected,
    Releaser,
)
from ._store import Store
from ._transport import Subscription, Transport, TransportFactory, Validator

log = logging.getLogger("shardnet.node")

REPUBLISH = 10.0
PULL_EVERY = 5.0
CONNECT_TIMEOUT = 5.0
MAX_PEERS = 32
BACKOFF_MAX = 30.0


def _slot_key(row: Any) -> tuple[str, int, int, str]:
    return (row["keyset_id"], row["epoch"], row["idx"], row["custodian"])


class NodeRuntime:
    def __init__(self, home: Home, *, keystore: Keystore, transport: TransportFactory,
                 bootstrap: list[str] | None = None, clock: Clock, rng: Rng, store: Store | None = None,
                 operator_io: bool = True) -> None:
        """``store``: the node's store (default: the home's database file). ``operator_io``:
        the control socket, the run files and signal handling; the grid's nodes go without."""
        self.home = home
        self.cfg = home.config()
        self.keystore = keystore
        self.transport = transport
        self.key = keystore.signer
        self.clock = clock
        self.rng = rng
        self.bootstrap = list(bootstrap or [])
        self.store = store if store is not None else home.open_store()
        self.operator_io = operator_io
        self.republish_every = REPUBLISH  # seconds between our descriptor's publications
        self.peer_id = home.peer_id()
        self.directory = Directory(self.store, self.peer_id)
        self.custodian = Custodian(self.store, keystore)
        self.owner = Owner(self.store, self.key, self.directory, rng)
        self.approvals = Approvals(self.store, self.key)
        self.releaser = Releaser(self.store, keystore, self.approvals, self.directory,
                                 threat_level=self.threat_level, rng=rng)
        self.votes_changed = trio.Event()
        self.net: Transport | None = None
        self.started = 0.0
        self.outbox_wakeup = trio.Event()
        self.progress = trio.Event()
        self._slots: dict[tuple[str, int, int, str], outbox.OutboxSlot] = {}  # pending deliveries
        self._notice_backoff: dict[str, tuple[float, float]] = {}  # peer -> (next notice, delay)
        self._dial_backoff: dict[str, tuple[float, float]] = {}  # peer -> (next dial, delay)
        self._pulled: set[str] = set()
        self._known = {r["peer_id"] for r in self.store.custodians()}
        self._addrs: dict[str, tuple[str, ...]] = {}
        self._in_flight: dict[tuple[str, str], trio.CapacityLimiter] = {}  # (peer, protocol) -> slots
        self._stop = trio.Event()

    def now(self) -> int:
        return int(self.clock())

    def _pick(self, items: list[str], k: int) -> list[str]:
        """Up to k of ``items``, chosen with the node's RNG."""
        pool, out = list(items), list[str]()
        while pool and len(out) < k:
            out.append(pool.pop(int.from_bytes(self.rng(4), "big") % len(pool)))
        return out

    # -- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listen = list(self.cfg.get("listen") or ["/ip4/127.0.0.1/tcp/0"])
        control = None
        if self.operator_io:
            self.home.run_dir.mkdir(mode=0o700, exist_ok=True)
            control = bind_control(self.home)
        try:
            async with self.transport(self.keystore.transport_seed(), listen) as net:
                self.net = net
                self.started = trio.current_time()
                self._publish_self()
                if self.operator_io:
                    write_atomic(self.home.addrs_file, json.dumps(
                        {"peer_id": self.peer_id, "addrs": net.listen_addrs, "pid": os.getpid()}).encode(),
                        0o644, overwrite=True)
                handlers = {wire.DELIVER: self._on_deliver, wire.DIRECTORY: self._on_directory_pull,
                            wire.RELEASE: self._on_release, wire.KEYSET: self._on_keyset_notice,
                            wire.SYNC: self._on_sync}
                for proto, handler in handlers.items():
                    net.serve(proto, handler, wire.REQUEST_TIMEOUT)
                sub = await net.subscribe(wire.DIRECTORY_TOPIC, self._validate_descriptor)
                req_sub = await net.subscribe(wire.REQUEST_TOPIC, self._validate_signed(Request))
                vote_sub = await net.subscribe(wire.VOTE_TOPIC, self._validate_signed(Vote))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drain_directory, sub)
                    nursery.start_soon(self._drain, req_sub, self._accept_request)
                    nursery.start_soon(self._drain, vote_sub, self._accept_vote)
                    nursery.start_soon(self._publish_loop)
                    nursery.start_soon(self._peers_loop)
                    nursery.start_soon(self._outbox_loop)
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

    # -- directory ------------------------------------------------------------------

    def _descriptor(self) -> Descriptor:
        assert self.net is not None
        return Descriptor.make(
            self.key, addrs=self.net.listen_addrs, hpke=self.keystore.hpke_public(),
            name=self.cfg["name"], country=self.cfg["country"], city=self.cfg.get("city", ""),
            org=self.cfg.get("org", ""), version=VERSION, seq=int(self.clock() * 1000),
        )

    def _publish_self(self) -> Descriptor:
        d = self._descriptor()
        self.directory.accept(d.signed, self.now())
        return d

    async def _publish_loop(self) -> None:
        while True:
            await self._publish(wire.DIRECTORY_TOPIC, self._publish_self().signed)
            await trio.sleep(self.republish_every)

    def _validate_descriptor(self, author: str, data: bytes) -> bool:
        try:
            d = Descriptor.from_bytes(data)
            if d.peer_id != author:
                return False
            return d.seq <= (self.clock() + wire.MAX_CLOCK_SKEW) * 1000
        except (p.ShardnetError, ValueError):
            return False

    async def _drain_directory(self, sub: Any) -> None:
        await self._drain(sub, self._accept_descriptor)

    def _accept_descriptor(self, data: bytes) -> None:
        try:
            d = self.directory.accept(data, self.now())
        except (p.ShardnetError, ValueError) as exc:
            log.info("descriptor refused: %s", exc)
            return
        if d is not None:
            if d.peer_id not in self._known:
                self._known.add(d.peer_id)
                log.info("custodian %s (%s) %s", d.name, d.country, d.peer_id)
            if self._addrs.get(d.peer_id) != d.addrs:
                # New addresses (a restart): retry now rather than after back-off.
                self._addrs[d.peer_id] = d.addrs
                self._dial_backoff.pop(d.peer_id, None)
                self._notice_backoff.pop(d.peer_id, None)
                for key, slot in self._slots.items():
                    if key[3] == d.peer_id and slot.state is outbox.OutboxState.PENDING:
                        slot.handle(outbox.PeerBack(), trio.current_time())
                self.outbox_wakeup.set()

    async def _on_directory_pull(self, remote: str, frame: bytes) -> bytes:
        return self.directory.pull_reply()

    async def _request(self, peer: str, proto: wire.StreamProtocol, payload: bytes) -> bytes:
        """One request to ``peer``, with never more of them in flight than it serves at once."""
        assert self.net is not None
        key = (peer, proto.id)
        limiter = self._in_flight.get(key)
        if limiter is None:
            limiter = self._in_flight[key] = trio.CapacityLimiter(proto.max_concurrent_per_peer)
        try:
            async with limiter:
                return await self.net.request(peer, proto, payload, wire.REQUEST_TIMEOUT)
        finally:
            if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
                self._in_flight.pop(key, None)

    async def _fetch(self, peer: str, proto: wire.StreamProtocol) -> Any:
        """One pull request (directory or sync); None if it failed (pulls are best effort)."""
        try:
            reply = await self._request(peer, proto, wire.PULL)
            return p.decode(reply, max_size=proto.max_reply, max_items=8192)
        except (tx.RequestError, p.ShardnetError) as exc:
            log.debug("%s pull from %s failed: %s", proto.id, peer, exc)
            return None

    async def _pull_from(self, peer: str) -> None:
        items = await self._fetch(peer, wire.DIRECTORY)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, bytes):
                self._accept_descriptor(item)

    def connected(self) -> list[str]:
        assert self.net is not None
        return self.net.connected()

    async def _dial(self, addr: str) -> str | None:
        assert self.net is not None
        try:
            return await self.net.connect(addr, CONNECT_TIMEOUT)
        except (tx.ConnectError, ValueError) as exc:
            log.debug("dial %s failed: %s", addr, exc)
            return None

    async def _dial_custodian(self, d: Descriptor) -> bool:
        """Dial a custodian at its descriptor's addresses, with per-peer back-off."""
        due, delay = self._dial_backoff.get(d.peer_id, (0.0, 0.5))
        if trio.current_time() < due:
            return False
        for addr in d.addrs:
            if await self._dial(addr if "/p2p/" in addr else f"{addr}/p2p/{d.peer_id}"):
                self._dial_backoff.pop(d.peer_id, None)
                return True
        delay = min(BACKOFF_MAX, delay * 2)
        self._dial_backoff[d.peer_id] = (trio.current_time() + delay, delay)
        return False

    async def _reach(self, peer: str, protocol: str) -> None:
        """Make sure we have a connection to ``peer`` (dialing its descriptor's addresses)."""
        if peer in self.connected():
            return
        d = self.directory.get(peer)
        if d is None or not await self._dial_custodian(d):
            raise tx.StreamOpenError(peer, protocol, "custodian unreachable")

    async def _peers_loop(self) -> None:
        """Bootstrap, then keep connected to known custodians and pull their directories."""
        for addr in self.bootstrap:
            await self._dial(addr)
        last_pull = 0.0
        while True:
            connected = set(self.connected())
            async with trio.open_nursery() as n:
                for peer in connected - self._pulled:
                    self._pulled.add(peer)
                    n.start_soon(self._pull_from, peer)
                    n.start_soon(self._sync_from, peer)
                if trio.current_time() - last_pull > PULL_EVERY and connected:
                    last_pull = trio.current_time()
                    for peer in self._pick(sorted(connected), 2):
                        n.start_soon(self._pull_from, peer)
                        n.start_soon(self._sync_from, peer)
                budget = MAX_PEERS - len(connected)
                for d in self.directory.all():
                    if budget <= 0:
                        break
                    if d.peer_id != self.peer_id and d.peer_id not in connected:
                        budget -= 1
                        n.start_soon(self._dial_custodian, d)
            self._pulled &= set(self.connected())
            await trio.sleep(0.5)

    # -- requests and votes ---------------------------------------------------------

    def threat_level(self) -> int:
        raw = self.store.get_kv("threat_level")
        return int(raw) if raw else 0

    def _validate_signed(self, cls: Any) -> Validator:
        def check(author: str, data: bytes) -> bool:
            try:
                rec = cls.from_bytes(data)
            except (p.ShardnetError, ValueError):
                return False
            who = rec.requester if isinstance(rec, Request) else rec.approver
            return bool(who == author)
        return check

    async def _drain(self, sub: Subscription, accept: Callable[[bytes], None]) -> None:
        while True:
            data = await sub.get()
            try:
                accept(data)
            except Exception:  # one bad record from a peer must never stop the node
                log.exception("dropping a gossip message that could not be processed")

    def _accept_request(self, data: bytes) -> None:
        try:
            req = self.approvals.accept_request(data, self.now())
        except (p.ShardnetError, ValueError) as exc:
            log.info("request refused: %s", exc)
            return
        if req is not None:
            log.info("reconstruction request %s for keyset %s from %s (%s): %s", req.id,
                     req.keyset_id.hex()[:12], req.requester, req.mode, req.reason)

    def _accept_vote(self, data: bytes) -> None:
        try:
            vote = self.approvals.accept_vote(data, self.now())
        except (p.ShardnetError, ValueError, LookupError) as exc:
            log.info("vote refused: %s", exc)
            return
        if vote is None:
            return
        v, added = vote
        if added is Added.EQUIVOCATION:
            log.warning("approver %s signed contradicting votes on request %s: it is void there",
                        v.approver, v.request_id)
        else:
            log.info("vote %s on request %s from %s", v.decision, v.request_id, v.approver)
        self.wake_voters()

    def wake_voters(self) -> None:
        self.votes_changed.set()
        self.votes_changed = trio.Event()

    async def _publish(self, topic: wire.Topic, data: bytes) -> None:
        assert self.net is not None
        try:
            await self.net.publish(topic, data)
        except Exception as exc:  # best effort: the sync protocol carries it too
            log.debug("publish on %s failed: %r", topic, exc)

    async def _on_sync(self, remote: str, frame: bytes) -> bytes:
        return self.approvals.sync_reply(self.now())

    async def _sync_from(self, peer: str) -> None:
        items = await self._fetch(peer, wire.SYNC)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes):
                try:
                    self._accept_request(item[0])
                    for v in item[1] if isinstance(item[1], list) else []:
                        if isinstance(v, bytes):
                            self._accept_vote(v)
                except Exception:  # as in _drain: a peer's bad record never stops the node
                    log.exception("dropping a synced record that could not be processed")

    async def _on_keyset_notice(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.approvals.accept_keyset_notice(remote, frame, self.now())
        except Rejected as exc:
            raise tx.RequestRejected(str(exc)) from None

    async def _notify(self, row: Any) -> None:
        """Push a keyset record to an approver that holds no shard of it."""
        assert self.net is not None
        peer = row["peer"]
        record = self.store.keyset(row["keyset_id"])
        assert record is not None
        state, error = "delivered", None
        try:
            await self._reach(peer, wire.KEYSET.id)
            await self._request(peer, wire.KEYSET, record["record"])
        except tx.RemoteError as exc:
            # Busy or slow is for later; anything else is the approver's answer.
            busy = exc.status in (tx.ReplyStatus.BUSY, tx.ReplyStatus.TIMEOUT)
            state, error = ("pending" if busy else "refused"), exc.reason
        except tx.RequestError as exc:
            state, error = "pending", str(exc)
        self.store.mark_notice(row["keyset_id"], peer, state, error=error, now=self.now())
        if state == "pending":
            _, delay = self._notice_backoff.get(peer, (0.0, 0.25))
            delay = min(BACKOFF_MAX, delay * 2)
            self._notice_backoff[peer] = (trio.current_time() + delay, delay)
        else:
            self._notice_backoff.pop(peer, None)

    async def _on_release(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.releaser.handle(remote, frame, self.now())
        except Rejected as exc:
            log.info("release to %s refused: %s", remote, exc)
            raise tx.RequestRejected(str(exc)) from None

    async def ask_release(self, peer: str, request: Request, votes: list[bytes]) -> bytes:
        """One release round trip to ``peer`` (or to ourselves, locally)."""
        assert self.net is not None
        frame = p.encode([wire.RELEASE_ASK_TAG, 1, request.signed, votes])
        if peer == self.peer_id:
            return self.releaser.handle(self.peer_id, frame, self.now())
        await self._reach(peer, wire.RELEASE.id)
        return await self._request(peer, wire.RELEASE, frame)

    # -- delivery -------------------------------------------------------------------

    async def _on_deliver(self, remote: str, frame: bytes) -> bytes:
        try:
            return self.custodian.handle_delivery(remote, frame, self.now())
        except Rejected as exc:
            log.info("delivery from %s rejected: %s", remote, exc)
            raise tx.RequestRejected(str(exc)) from None

    async def _outbox_loop(self) -> None:
        """Drive one outbox slot machine per pending delivery (protocol/_outbox.py)."""
        limiter = trio.CapacityLimiter(16)
        while True:
            self.outbox_wakeup = trio.Event()
            now = trio.current_time()
            rows = {_slot_key(r): r for r in self.store.pending()}
            for key in set(self._slots) - set(rows):  # delivered, refused or gone meanwhile
                del self._slots[key]
            wake = now + 30.0
            by_peer: dict[str, list[Any]] = {}
            for key, row in rows.items():
                slot = self._slots.setdefault(key, outbox.OutboxSlot(now=now))
                for effect in slot.handle(outbox.Tick(), now):
                    if isinstance(effect, outbox.Send):
                        by_peer.setdefault(row["custodian"], []).append(row)
                    elif isinstance(effect, outbox.WakeAt):
                        wake = min(wake, effect.time)
            notices = [r for r in self.store.pending_notices()
                       if self._notice_backoff.get(r["peer"], (0.0, 0.0))[0] <= now]
            if notices or self.store.pending_notices():
                wake = min(wake, now + 1.0)
            if by_peer or notices:
                async with trio.open_nursery() as n:
                    for peer, peer_rows in by_peer.items():
                        n.start_soon(self._deliver_to, peer, peer_rows, limiter)
                    for notice in notices:
                        n.start_soon(self._notify, notice)
                continue  # outcomes may have made other slots due
            with trio.move_on_at(wake):
                await self.outbox_wakeup.wait()

    async def _deliver_to(self, peer: str, rows: list[Any], limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            for row in rows:
                await self._deliver_one(row)
            self.progress.set()
            self.progress = trio.Event()

    async def _deliver_one(self, row: Any) -> None:
        """Send one slot's shard and feed the outcome to its machine."""
        assert self.net is not None
        peer = row["custodian"]
        slot = self._slots[_slot_key(row)]
        frame, cover = self.owner.delivery_frame(row, self.now())
        receipt = None
        event: outbox.Event
        try:
            if peer == self.peer_id:
                reply = self.custodian.handle_delivery(self.peer_id, frame, self.now())
            else:
                await self._reach(peer, wire.DELIVER.id)
                reply = await self._request(peer, wire.DELIVER, frame)
            receipt = self.owner.check_receipt(row, cover, reply)
            event = outbox.Receipted(receipt.status, receipt.reason)
            log.info("shard %s:%d -> %s: %s%s", row["keyset_id"][:12], row["idx"], peer, receipt.status,
                     f" ({receipt.reason})" if receipt.reason else "")
        except (tx.RequestError, Rejected, p.ShardnetError) as exc:
            event = outbox.SendFailed(str(exc))
            log.info("delivery of %s:%d to %s failed: %s", row["keyset_id"][:12], row["idx"], peer, exc)
        for effect in slot.handle(event, trio.current_time()):
            if isinstance(effect, outbox.Record):
                self.owner.record(row, effect, receipt, self.now())
        if receipt is not None:  # the custodian answers: its other slots need not wait out a back-off
            for key, other in self._slots.items():
                if key[3] == peer and other is not slot and other.state is outbox.OutboxState.PENDING:
                    other.handle(outbox.PeerBack(), trio.current_time())

    # -- control commands -----------------------------------------------------------

    def live(self) -> dict[str, Any]:
        assert self.net is not None
        return {"addrs": self.net.listen_addrs, "peers": self.connected(),
                "uptime_s": trio.current_time() - self.started}

    def commands(self) -> dict[str, Command]:
        """The control socket's command table."""
        def reads(fn: Callable[[dict[str, Any]], Any]) -> Command:
            async def command(args: dict[str, Any], emit: Emit) -> Any:
                return fn(args)
            return command

        return {
            "status": reads(lambda a: _api.status(self.store, self.peer_id, self.cfg, self.live())),
            "custodians": reads(lambda a: _api.custodians(self.store, self.peer_id)),
            "key-list": reads(lambda a: _api.keysets(self.store)),
            "key-show": reads(lambda a: _api.keyset_detail(self.store, str(a["keyset"]))),
            "audit-verify": reads(lambda a: _api.audit_verify(self.store, self.key.public_key().public_bytes_raw())),
            "requests": reads(lambda a: self.approvals.listing(self.now())),
            "threat-level": reads(self._threat_level),
            "stop": reads(lambda a: self._stop_command()),
            "key-import": self._import,
            "approve": self._vote("approve"),
            "deny": self._vote("deny"),
            "key-reconstruct": lambda a, emit: reconstruct(self, a, emit),
        }

    def _vote(self, decision: str) -> Command:
        async def command(args: dict[str, Any], emit: Emit) -> Any:
            vote = self.approvals.cast(str(args["request"]), decision, self.now())
            self.wake_voters()
            await self._publish(wire.VOTE_TOPIC, vote.signed)
            return {"request": vote.request_id, "decision": vote.decision, "approver": vote.approver}
        return command

    def _threat_level(self, args: dict[str, Any]) -> Any:
        if args.get("level") is not None:
            level = int(args["level"])
            if not 0 <= level <= 5:
                raise ValueError("threat level is 0 (low) to 5 (critical)")
            self.store.put_kv("threat_level", str(level).encode())
        return {"threat_level": self.threat_level()}

    def _stop_command(self) -> Any:
        self.stop()
        return {"stopping": True}

    async def _import(self, args: dict[str, Any], emit: Emit) -> Any:
        import base64

        master = base64.b64decode(args["key"])
        res = self.owner.import_key(
            master, int(args["threshold"]), int(args["shares"]), now=self.now(),
            placement_expr=args.get("placement"), redundancy=int(args.get("redundancy") or 1),
            expires=args.get("expires"), kem=str(args.get("kem") or "x25519"),
            approvers=args.get("approvers"), quorum=args.get("quorum"), policy_text=args.get("policy"),
        )
        del master
        ks = res.keyset
        total = sum(len(h) for h in res.holders.values())
        await emit({"kind": "placed", "keyset": ks.id_hex, "total": total,
                    "holders": {str(k): v for k, v in res.holders.items()}, "note": res.note})
        self.outbox_wakeup.set()
        deadline = trio.current_time() + float(args.get("wait") or 30)
        while True:
            rows = self.store.outbox(ks.id_hex)
            done = [r for r in rows if r["state"] != "pending"]
            await emit({"kind": "progress", "done": len(done), "total": total})
            if len(done) == total or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await self.progress.wait()
        detail = _api.keyset_detail(self.store, ks.id_hex)
        detail["note"] = res.note
        return detail

