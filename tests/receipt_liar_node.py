"""Test-only entry point: a custodian node that signs receipts for shards it drops.

    python tests/receipt_liar_node.py run --home DIR ...

Its delivery service sees a store that keeps the keyset's record but not the shard, so
it answers a delivery with a signed "stored" receipt and holds nothing. Asked for a
release, the ordinary code then answers, signed, that it holds no share. Like
liar_node.py, only this file, in tests/, makes a node lie.
"""

from __future__ import annotations

import sys
from typing import Any

from shardnet.node import _services
from shardnet.node.cli import main
from shardnet.simulations._byzantine import Forgetful

_honest_init = _services.Custodian.__init__


def _forgetful_init(self: _services.Custodian, *args: Any, **kwargs: Any) -> None:
    _honest_init(self, *args, **kwargs)
    self.store = Forgetful(self.store)  # type: ignore[assignment]


_services.Custodian.__init__ = _forgetful_init  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
