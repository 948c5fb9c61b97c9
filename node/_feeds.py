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
        self._parsed: dict[tuple[str, str], fd.Feed | None] = {}  # (id, signature) -> the stored issue, checked

    # -- configuration ------------------------------------------------------------------

    def all(self) -> list[Followed]:
        out = []
        for key in sorted(self.store.kv_keys(PREFIX, except_value=b"")):
            raw = self.store.get_kv(key)
            if raw is None:
                continue
            d = json.loads(raw)
            fid = key[len(PREFIX):]
            last, error = self._stored_issue(fid, d), str(d.get("error", ""))
            if d.get("body") and last is None:
                error = "the stored issue does not verify with the configured signer"
            out.append(Followed(fid, d["source"], bytes.fromhex(d["signer"]), int(d["every"]), last,
                                int(d.get("polled", 0)), error))
        return sorted(out, key=lambda f: f.source)

    def _stored_issue(self, fid: str, d: dict[str, Any]) -> fd.Feed | None:
        """The issue kept for a feed, checked once per signature (then kept in memory)."""
        if not d.get("body"):
            return None
        cache = (fid, f"{d['signer']}:{d['signature']}")
        if cache not in self._parsed:
            if len(self._parsed) > 2 * MAX_FEEDS:
                self._parsed.clear()
            try:
                self._parsed[cache] = fd.parse(json.dumps({"shardnet_feed": fd.FEED_VERSION, "body": d["body"],
                                                           "signature": d["signature"]}).encode(),
                                               bytes.fromhex(d["signer"]))
            except p.ShardnetError:
                self._parsed[cache] = None
        return self._parsed[cache]

    def _save(self, f: Followed, document: dict[str, Any] | None = None, *, new: bool = False) -> None:
        """Keep a feed's state; only for a feed still followed, unless ``new`` (a removal
        during a poll is not undone)."""
        raw = self.store.get_kv(PREFIX + f.id)
        if raw is None and not new:
            return
        d = json.loads(raw) if raw and not new else {}
        d.update(source=f.source, signer=f.signer.hex(), every=f.every, polled=f.polled, error=f.error)
        if document is not None:
            d.update(body=document["body"], signature=document["signature"])
        self.store.put_kv(PREFIX + f.id, json.dumps(d).encode())

    def add(self, source: str, signer: str, every: int, now: int) -> dict[str, Any]:
        source = source.strip()
        if source.startswith(("http://", "https://")):
            url = urllib.parse.urlsplit(source)
            try:
                url.port  # noqa: B018 - raises for a port that is not one
            except ValueError:
                raise FeedError(f"{source}: not a valid port") from None
            if not url.hostname or url.username or url.password:
                raise FeedError(f"{source}: an http(s) URL with a host and no credentials")
        else:
            path = pathlib.Path(source)
            if not path.is_absolute():
                raise FeedError(f"{source}: a feed file is given by its absolute path")
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
        held = known.get(f.id)
        self._save(f, new=held is None or held.signer != key)  # a new signer starts afresh; else the issue stays
        self.store.append_audit("feed-added", {"id": f.id, "source": source, "signer": key.hex(), "every": every},
                                now, self.key)
        return f.to_json(now)

    def remove(self, ref: str, now: int) -> dict[str, Any]:
        for f in self.all():
            if ref in (f.id, f.source):
                self.store.delete_kv(PREFIX + f.id)
                self.store.append_audit("feed-removed", {"id": f.id, "source": f.source}, now, self.key)
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
        except (p.ShardnetError, OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError,
                ValueError, UnicodeError) as exc:  # a reset, a failed TLS handshake, a bad URL: all one line
            f.error = (str(exc) or type(exc).__name__)[:300]
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
                try:
                    await self.poll(f, int(clock()))
                except Exception:  # noqa: BLE001 - one feed never stops the node
                    log.exception("feed %s: poll failed", f.source)
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
            ("Host", (url.hostname or "") + (f":{url.port}" if url.port else "")), ("User-Agent", "shardnet"), ("Accept", "application/json"),
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
