"""Test-only entry point: a custodian node that serves forged keyset records.

    python tests/forger_node.py run --home DIR ...

Each keyset fetch it answers gets the next forgery of ``FORGERIES`` in turn:
the honest record re-signed with the forger's own key, the honest record with
a broken signature, or a valid record of another keyset (the forger's own).
Nothing in the shipped package can do this; only this file, which lives in
tests/, replaces a method before the node starts.
"""

from __future__ import annotations

import itertools
import sys

from shardnet import protocol as p
from shardnet.node import _keyset_fetch
from shardnet.node.cli import main
from shardnet.protocol import keyset_fetch as kf

FORGERIES = ("other-owner", "bad-signature", "other-keyset")
_next = itertools.cycle(FORGERIES)
_honest = _keyset_fetch.RecordService.serve


def _forged(self: _keyset_fetch.RecordService, remote: str, frame: bytes) -> bytes:
    record, receipts = p.decode_record(_honest(self, remote, frame), kf.FETCH_REPLY_TAG, 1, 2)
    kind = next(_next)
    if kind == "other-owner":
        _, _, body = p.open_signed(record, tag="shardnet/keyset", version=1, fields=16)
        record = p.sign_body(self.key, body)
    elif kind == "bad-signature":
        record = record[:-1] + bytes([record[-1] ^ 1])
    else:
        record = p.split_key(b"not the key", 2, 3, owner=self.key, now=int(self.clock()),
                             attrs={"holders": {"1": [self.peer_id]}})[0].signed
    return kf.reply(record, receipts)


_keyset_fetch.RecordService.serve = _forged  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
