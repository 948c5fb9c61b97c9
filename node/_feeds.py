"""The threat feeds a node follows (``shardnet feed add``), polled and checked.

Each feed is a source (a file, or an http(s) URL), the one Ed25519 key that
signs it, and a poll interval. Its configuration and the last issue taken are
kept in the store (``feed:<id>``), so a restart goes on from there. The
document format and its checks are ``protocol/_feed.py``.

What the feeds say, while an issue is not expired:

* its ``threat_level``: the highest of the feeds' and the operator's own
  (``shardnet threat --level``) is what this node's release policy sees;
* its compromised custodians and unsafe places: the autopilot of an authority
  node reshards the keysets it is an authority of away from them. A node that is
  no authority of a keyset changes nothing about it, whatever its feeds say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import h11
import trio

from shardnet import protocol as p
from shardnet.protocol import feed as fd
from shardnet.protocol import triggers as tr

from ._clock import Clock
from ._store import Store

log = logging.getLogger("shardnet.node")

PREFIX = "feed:"
#: Feeds a node follows at most; the shortest poll interval; seconds a fetch may take.
MAX_FEEDS = 32
MIN_EVERY = 1
FETCH_TIMEOUT = 10.0


class FeedError(p.ShardnetError):
    """A feed could not be read (a file or a server), or its configuration is not valid."""


@dataclass
class Followed:
    id: str
    source: str
    signer: bytes
    every: int
    last: fd.Feed | None = None
    polled: int = 0
    error: str = ""

    def to_json(self, now: int) -> dict[str, Any]:
        live = self.last is not None and self.last.expires >= now
        return {"id": self.id, "source": self.source, "signer": self.signer.hex(), "every": self.every,
                "polled": self.polled, "error": self.error, "live": live,
                "issue": self.last.to_json() if self.last is not None else None}


def feed_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:12]


class Feeds:
    def __init__(self, store: Store, key: p.Signer) -> None:
        self.store = store
        self.key = key

    # -- configuration ------------------------------------------------------------------

    def all(self) -> list[Followed]:
        out = []
        for key in sorted(self.store.kv_keys(PREFIX, except_value=b"")):
            raw = self.store.get_kv(key)
            if raw is None:
                continue
            d = json.loads(raw)
            last = None
            if d.get("body"):
                last = fd.parse(json.dumps({"shardnet_feed": fd.FEED_VERSION, "body": d["body"],
                                            "signature": d["signature"]}).encode(), bytes.fromhex(d["signer"]))
            out.append(Followed(key[len(PREFIX):], d["source"], bytes.fromhex(d["signer"]), int(d["every"]), last,
                                int(d.get("polled", 0)), str(d.get("error", ""))))
        return sorted(out, key=lambda f: f.source)

    def _save(self, f: Followed, document: dict[str, Any] | None = None) -> None:
        raw = self.store.get_kv(PREFIX + f.id)
        d = json.loads(raw) if raw else {}
        d.update(source=f.source, signer=f.signer.hex(), every=f.every, polled=f.polled, error=f.error)
        if document is not None:
            d.update(body=document["body"], signature=document["signature"])
        self.store.put_kv(PREFIX + f.id, json.dumps(d).encode())

    def add(self, source: str, signer: str, every: int) -> dict[str, Any]:
        source = source.strip()
        if not source.startswith(("http://", "https://")):
            path = pathlib.Path(source)
            if not path.is_file():
                raise FeedError(f"{source}: no such file (a feed is a file or an http(s) URL)")
            source = str(path.resolve())
        if every < MIN_EVERY:
            raise FeedError(f"--every: at least {MIN_EVERY} s")
        key = fd.signer_key(signer)
        known = {f.id: f for f in self.all()}
        if feed_id(source) not in known and len(known) >= MAX_FEEDS:
            raise FeedError(f"this node follows {MAX_FEEDS} feeds already (shardnet feed remove one)")
        f = Followed(feed_id(source), source, key, every)
        self._save(f)
        return f.to_json(0)

    def remove(self, ref: str) -> dict[str, Any]:
        for f in self.all():
            if ref in (f.id, f.source):
                self.store.delete_kv(PREFIX + f.id)
                return {"id": f.id, "source": f.source, "removed": True}
        raise LookupError(f"no feed {ref!r} (see shardnet feed list)")

    def listing(self, now: int) -> list[dict[str, Any]]:
        return [f.to_json(now) for f in self.all()]

    # -- what they say ------------------------------------------------------------------

    def threats(self, now: int) -> tr.Threats:
        live = [f.last for f in self.all() if f.last is not None and f.last.expires >= now]
        return tr.Threats(frozenset().union(*(x.compromised for x in live)),
                          frozenset().union(*(x.unsafe for x in live)))

    def threat_level(self, now: int) -> int:
        return max([0, *(f.last.threat_level for f in self.all() if f.last is not None and f.last.expires >= now)])

    # -- polling ------------------------------------------------------------------------

    async def poll(self, f: Followed, now: int) -> bool:
        """Fetch and check one feed; whether it brought a new issue."""
        f.polled = now
        try:
            with trio.fail_after(FETCH_TIMEOUT):
                document = await fetch(f.source)
            issue = fd.take(document, f.signer, now, f.last)
        except (p.ShardnetError, OSError, trio.TooSlowError, h11.ProtocolError) as exc:
            f.error = str(exc) or type(exc).__name__
            log.warning("feed %s: %s", f.source, f.error)
            self._save(f)
            return False
        f.error = ""
        if issue is None:
            self._save(f)
            return False
        f.last = issue
        self._save(f, json.loads(document))
        self.store.append_audit("feed-taken", {"id": f.id, "source": f.source, **issue.to_json()}, now, self.key)
        log.info("feed %s: issue %d taken (%d compromised, %d unsafe, threat level %d)", f.source, issue.seq,
                 len(issue.compromised), len(issue.unsafe), issue.threat_level)
        return True

    def due(self, now: int) -> list[Followed]:
        return [f for f in self.all() if now >= f.polled + f.every]

    async def run(self, clock: Clock) -> None:
        """Poll each feed when its interval has passed (checked every second)."""
        while True:
            for f in self.due(int(clock())):
                await self.poll(f, int(clock()))
            await trio.sleep(1)


async def fetch(source: str) -> bytes:
    """A feed document: a file's bytes, or the body of an http(s) GET; at most MAX_FEED bytes."""
    if not source.startswith(("http://", "https://")):
        return _read_file(source)
    url = urllib.parse.urlsplit(source)
    port = url.port or (443 if url.scheme == "https" else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(url.hostname or "", port)
    if url.scheme == "https":
        stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=url.hostname)
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[
            ("Host", url.netloc), ("User-Agent", "shardnet"), ("Accept", "application/json"),
            ("Connection", "close")])) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        body = bytearray()
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(16 * 1024))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > fd.MAX_FEED:
                    raise FeedError(f"{source}: over {fd.MAX_FEED} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if status != 200:
            raise FeedError(f"{source}: HTTP {status}")
        return bytes(body)


def _read_file(source: str) -> bytes:
    """A local feed file, read in the event loop: at most 64 KiB from a local disk takes
    microseconds, and a worker thread would let a virtual clock run past the read."""
    try:
        with open(source, "rb") as fh:
            data = fh.read(fd.MAX_FEED + 1)
    except OSError as exc:
        raise FeedError(f"cannot read {source}: {exc.strerror}") from None
    if len(data) > fd.MAX_FEED:
        raise FeedError(f"{source}: over {fd.MAX_FEED} bytes")
    return data
