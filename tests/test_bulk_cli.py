"""Bulk re-encryption on real node processes over real libp2p: one `shardnet revoke` of a
custodian that holds shares of many keysets; the new revocation lists reach the nodes in a
gossip batch, and the autopilot reshares every keyset with its epoch asks batched."""

from __future__ import annotations

import base64
import json
import pathlib
import time

import pytest

from shardnet.node._control import call
from shardnet.simulations._local import FIVE_CONTINENTS, LocalCluster, run_cli

from .test_epochs_cli import KEY, home, names, wait_for
from .test_reconstruct import reconstruct

pytestmark = pytest.mark.slow
KEYSETS = 12


def test_revoking_a_custodian_of_many_keysets_reshards_them_all_with_batched_asks(tmp_path: pathlib.Path) -> None:
    with LocalCluster(tmp_path, FIVE_CONTINENTS, autopilot=True) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        who = names(c)
        owner = c.nodes["frankfurt"].home
        victim = c.nodes["sydney"].peer_id
        others = [c.nodes[n].peer_id for n in ("new-york", "tokyo", "sao-paulo")]
        ids = []
        for i in range(KEYSETS):  # each held by the victim and two of the others
            res = call(owner, "key-import", {"key": base64.b64encode(KEY).decode(), "threshold": 2, "shares": 3,
                                             "placement": "", "custodians": [victim, others[i % 3],
                                                                             others[(i + 1) % 3]]})
            assert [s["state"] for s in res["shards"]] == ["delivered"] * 3
            ids.append(res["keyset"])
        before = json.loads(run_cli("status", "--home", home(c, "frankfurt"), "--json").stdout)["epoch_asks"]
        t0 = time.monotonic()
        # No --keyset: every keyset frankfurt is an authority of.
        r = run_cli("revoke", "--home", home(c, "frankfurt"), "--custodian", victim, "--reason", "seized",
                    "--json")
        assert r.returncode == 0, r.stderr
        assert sorted(x["keyset"] for x in json.loads(r.stdout)) == sorted(ids)

        def known_at_victim() -> bool:  # its deal asks carry no rules: it learns them from gossip
            rows = json.loads(run_cli("revocations", "--home", home(c, "sydney"), "--json").stdout)
            return {x["keyset"] for x in rows if x.get("peer") == victim} == set(ids)
        assert wait_for(known_at_victim, timeout=30)

        def still_held() -> list[str]:
            out = []
            for k in ids:
                shown = call(owner, "key-show", {"keyset": k})
                if victim in {s["custodian"] for s in shown["shards"] if s["epoch"] == shown["epoch"]} \
                        or shown["epoch"] == 0:
                    out.append(k)
            return out
        assert wait_for(lambda: not still_held(), timeout=180), f"still held: {still_held()}"
        took = time.monotonic() - t0
        after = json.loads(run_cli("status", "--home", home(c, "frankfurt"), "--json").stdout)["epoch_asks"]
        frames, requests = after["frames"] - before["frames"], after["requests"] - before["requests"]
        # 12 rounds of 3 deals, up to 3 echoes and a commit for each other participant, to four
        # custodians (frankfurt answers its own asks itself): a few requests carried them all.
        assert frames >= 6 * KEYSETS and requests * 3 <= frames, (frames, requests, took)
        with c.nodes["frankfurt"].home.open_store() as store:
            done = [e.body for e in store.audit_entries() if e.kind == "trigger"]
        assert sorted(t["keyset"] for t in done) == sorted(ids)
        assert all(t["away"] == [victim] for t in done)
        # The custodians at import approve (the approvers of the keyset; sydney is revoked).
        code, res, err, _ = reconstruct(c, tmp_path, ids[0], approvers=(who[others[0]], who[others[1]]))
        assert code == 0, err
