"""The CLI side of the control socket (plain blocking sockets: no trio, no libp2p).

One request per connection: a JSON line ``{"cmd": ..., "args": {...}}``; the
node answers with zero or more ``{"event": ...}`` lines and one final
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ..., "exit": N}``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from ._home import Home


class NotRunning(Exception):
    """No node answers on the home's control socket."""


class ControlFailed(Exception):
    """A command failed. ``answered``: the node said so; otherwise the connection was lost
    (the node died, or took too long), and whether the command took effect is unknown."""

    def __init__(self, message: str, exit_code: int, *, answered: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.answered = answered


def call(
    home: Home, cmd: str, args: dict[str, Any] | None = None, *,
    on_event: Callable[[dict[str, Any]], None] | None = None, timeout: float = 600.0,
) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(home.control_socket))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(
                f"no node is running in {home.path} (start it with 'shardnet run --home {home.path}')"
            ) from None
        sock.sendall((json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode())
        with sock.makefile("rb") as f:  # closed on every path, so the socket really is closed below
            for line in f:
                try:
                    msg = json.loads(line)
                except ValueError:  # half a line: the node died while it wrote
                    raise ControlFailed("the node closed the control connection mid-answer", 1,
                                        answered=False) from None
                if "event" in msg:
                    if on_event:
                        on_event(msg["event"])
                    continue
                if msg.get("ok"):
                    return msg.get("result")
                raise ControlFailed(str(msg.get("error")), int(msg.get("exit", 1)))
        raise ControlFailed("the node closed the control connection without an answer", 1, answered=False)
    except TimeoutError:
        raise ControlFailed(f"no answer from the node within {timeout:.0f} s", 1, answered=False) from None
    except OSError as exc:  # reset, broken pipe, aborted: the node went away
        raise ControlFailed(f"the control connection broke: {exc}", 1, answered=False) from None
    finally:
        sock.close()
