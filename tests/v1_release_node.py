"""Test-only entry point: a node from before signed no-shard answers.

    python tests/v1_release_node.py run --home DIR ...

It serves and asks release version 1 (``/shardnet/release/1``) alone, as a node of an
older release does: a requester of this one falls back to it, and it refuses where a
newer node would answer that it holds no share.
"""

from __future__ import annotations

import sys

from shardnet.protocol import wire

wire.RELEASE = wire.RELEASE_V1  # type: ignore[misc]

from shardnet.node.cli import main  # noqa: E402 - after the swap, as an older node's code

if __name__ == "__main__":
    sys.exit(main())
