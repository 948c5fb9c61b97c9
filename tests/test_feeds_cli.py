"""A threat feed served over HTTP on 127.0.0.1 to real node processes: `shardnet feed add`
on the keyset's authority node, a country marked unsafe, and its shards move elsewhere
within one poll and one autopilot pass plus a round; a bad feed is refused with one line."""

from __future__ import annotations

import http.server
import json
import pathlib
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.node import _autopilot
from shardnet.protocol import feed
from shardnet.simulations._local import FIVE_CONTINENTS, LocalCluster, run_cli

from .test_epochs_cli import home, import_key, names, wait_for

pytestmark = pytest.mark.slow
SIGNER = Ed25519PrivateKey.from_private_bytes(b"\x55" * 32)


class Served:
    """One document, served at /feed.json by a local HTTP server; replace ``body`` at will."""

    def __init__(self) -> None:
        self.body = b"{}"
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(200 if self.path == "/feed.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/feed.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture()
def served() -> Iterator[Served]:
    s = Served()
    s.thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()


def test_a_feed_marks_a_country_unsafe_and_its_shards_move(tmp_path: pathlib.Path, served: Served) -> None:
    with LocalCluster(tmp_path, FIVE_CONTINENTS, autopilot=True) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        d = import_key(c, tmp_path, "--placement", "", t=2, n=3)
        ks = d["keyset"]
        who = names(c)
        victim = next(who[s["custodian"]] for s in d["shards"] if who[s["custodian"]] != "frankfurt")
        country = c.nodes[victim].spec.country
        now = int(time.time())
        served.body = feed.make(SIGNER, name="intel", seq=1, issued=now, expires=now + 3600,
                                unsafe=[("country", country)])
        r = run_cli("feed", "add", "--home", home(c, "frankfurt"), str(tmp_path / "missing.json"), "--signer",
                    SIGNER.public_key().public_bytes_raw().hex())
        assert r.returncode != 0 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        t0 = time.monotonic()
        r = run_cli("feed", "add", "--home", home(c, "frankfurt"), served.url, "--signer",
                    SIGNER.public_key().public_bytes_raw().hex(), "--every", "2s", "--json")
        assert r.returncode == 0, r.stderr

        def holders() -> set[str]:
            shown = json.loads(run_cli("key", "show", "--home", home(c, "frankfurt"), ks, "--json").stdout)
            return {who[s["custodian"]] for s in shown["shards"] if s["epoch"] == shown["epoch"]}

        moved = wait_for(lambda: victim not in holders() and holders(), timeout=2 * _autopilot.EVERY + 60)
        assert moved and all(c.nodes[n].spec.country != country for n in moved), \
            f"{victim} ({country}) still holds after {time.monotonic() - t0:.0f} s"
        [f] = json.loads(run_cli("feed", "list", "--home", home(c, "frankfurt"), "--json").stdout)
        assert f["live"] and f["issue"]["seq"] == 1 and f["error"] == ""
        # An unsigned issue is refused with one line; the one taken stays in force.
        served.body = json.dumps({"shardnet_feed": 1, "body": ""}).encode()
        bad = wait_for(lambda: json.loads(run_cli("feed", "list", "--home", home(c, "frankfurt"),
                                                  "--json").stdout)[0]["error"], timeout=20)
        assert bad == "feed: unsigned"
        def audited() -> list[dict]:  # written once the round has returned to the coordinator
            with c.nodes["frankfurt"].home.open_store() as store:
                return [e.body for e in store.audit_entries() if e.kind == "trigger"]
        [t] = wait_for(audited, timeout=30)
        assert (t["trigger"], t["action"]) == ("threat-feed", "reshare")
