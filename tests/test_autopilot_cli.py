"""The autopilot on real node processes over real libp2p: `shardnet revoke` alone, and the
keyset is resharded without the custodian by its authority node (no `shardnet reshare`)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from shardnet.node import _autopilot
from shardnet.simulations._local import FIVE_CONTINENTS, LocalCluster, run_cli

from .test_epochs_cli import home, import_key, names, wait_for
from .test_reconstruct import reconstruct

pytestmark = pytest.mark.slow


def test_a_revoked_custodian_is_resharded_away_by_the_autopilot(tmp_path: pathlib.Path) -> None:
    with LocalCluster(tmp_path, FIVE_CONTINENTS, autopilot=True) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        d = import_key(c, tmp_path, "--placement", "", t=2, n=3)
        ks = d["keyset"]
        who = names(c)
        victim = next(who[s["custodian"]] for s in d["shards"] if who[s["custodian"]] != "frankfurt")
        t0 = time.monotonic()
        r = run_cli("revoke", "--home", home(c, "frankfurt"), "--custodian", c.nodes[victim].peer_id,
                    "--keyset", ks, "--reason", "its disk was stolen", "--json")
        assert r.returncode == 0, r.stderr

        def holders() -> set[str]:
            shown = json.loads(run_cli("key", "show", "--home", home(c, "frankfurt"), ks, "--json").stdout)
            return {who[s["custodian"]] for s in shown["shards"] if s["epoch"] == shown["epoch"]}

        now = wait_for(lambda: victim not in holders() and holders(), timeout=2 * _autopilot.EVERY + 60)
        assert now and victim not in now, f"still held by {victim} after {time.monotonic() - t0:.0f} s"
        def audited() -> list[dict]:  # written once the round has returned to the coordinator
            with c.nodes["frankfurt"].home.open_store() as store:
                return [e.body for e in store.audit_entries() if e.kind == "trigger"]
        [t] = wait_for(audited, timeout=30)
        assert (t["trigger"], t["action"], t["away"]) == ("revocation", "reshare", [c.nodes[victim].peer_id])
        first = sorted({who[s["custodian"]] for s in d["shards"]} - {victim})  # the custodians at import approve
        code, res, err, _ = reconstruct(c, tmp_path, ks, approvers=tuple(first[:2]))
        assert code == 0, err
