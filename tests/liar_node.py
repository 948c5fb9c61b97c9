"""Test-only entry point: a custodian node whose release service lies.

    python tests/liar_node.py run --home DIR ...

It swaps the release payload for one computed from a wrong share (share + 1),
then runs the ordinary CLI. Nothing in the shipped package can do this: there
is no flag or code path that makes a node lie; only this file, which lives in
tests/, replaces a method before the node starts.
"""

from __future__ import annotations

import dataclasses
import sys

from shardnet import protocol as p
from shardnet.node import _services
from shardnet.node.cli import main
from shardnet.protocol import _group
from shardnet.protocol._requests import Request

_honest = _services.Releaser._payload


def _lying_payload(self: _services.Releaser, keyset: p.Keyset, req: Request, share: p.Share) -> bytes:
    wrong = dataclasses.replace(share, value=(share.value + 1) % _group.L)
    return _honest(self, keyset, req, wrong)


_services.Releaser._payload = _lying_payload  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
