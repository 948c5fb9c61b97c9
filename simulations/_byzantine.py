"""Byzantine custodians for scenarios: nodes of this process made to lie.

Only a runtime object in a simulation's own process can be made to lie, by
replacing one of its methods on that instance; no flag, config or wire record
makes a running node do it.
"""

from __future__ import annotations

import dataclasses
import types
from typing import TYPE_CHECKING

from shardnet import protocol as p
from shardnet.node._services import Releaser
from shardnet.protocol import Request, hazmat

if TYPE_CHECKING:
    from shardnet.node._runtime import NodeRuntime


def _wrong(self: Releaser, keyset: p.Keyset, req: Request, share: p.Share) -> bytes:
    wrong = dataclasses.replace(share, value=(share.value + 1) % hazmat.GROUP_ORDER)
    return Releaser._payload(self, keyset, req, wrong)


def lie_in_releases(node: NodeRuntime) -> None:
    """From now on, ``node`` releases a partial (or share) computed from a wrong share,
    with a proof that cannot match its commitment."""
    node.releaser._payload = types.MethodType(_wrong, node.releaser)  # type: ignore[method-assign]
