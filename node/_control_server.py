"""The node side of the control socket: one JSON request per connection, a command table.

The CLI (``_control.py``) sends ``{"cmd": ..., "args": {...}}`` as one line.
The server looks the command up in the table it was given, and answers with
zero or more ``{"event": ...}`` lines (progress) and one final
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ..., "exit": N}``.

Exit codes: 2 for bad usage or bad input (ValueError, LookupError, malformed
data, an unknown command), 1 for a failure (ControlError, any other shardnet
or OS error). A bug is reported as one line too, and the node stays up.
"""

from __future__ import annotations

import json
import logging
import os
import socket as _socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from shardnet import protocol as p

from ._home import Home
from ._store import StoreError

log = logging.getLogger("shardnet.node")

MAX_CONTROL_REQUEST = 256 * 1024
REQUEST_READ_TIMEOUT = 10.0

Emit = Callable[[dict[str, Any]], Awaitable[None]]
#: ``await command(args, emit) -> result`` (anything JSON can carry).
Command = Callable[[dict[str, Any], Emit], Awaitable[Any]]


class ControlError(Exception):
    """A command failed in a way the user should read; ``exit_code`` is the CLI's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind_control(home: Home) -> trio.SocketListener:
    """Listen on ``DIR/run/control.sock`` (mode 0600); refuse if a node already answers there."""
    path = str(home.control_socket)
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        raise ControlError(f"a node is already running in {home.path}")
    finally:
        probe.close()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is 0600 from the moment it exists
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def serve_control(listener: trio.SocketListener, commands: Mapping[str, Command],
                        nursery: trio.Nursery) -> None:
    while True:
        stream = await listener.accept()
        nursery.start_soon(_connection, stream, commands)


async def _connection(stream: trio.SocketStream, commands: Mapping[str, Command]) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(REQUEST_READ_TIMEOUT):
            while b"\n" not in buf and len(buf) < MAX_CONTROL_REQUEST:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
        try:
            req = json.loads(buf.split(b"\n", 1)[0])
            cmd, args = str(req["cmd"]), _Args(req.get("args") or {})
            args.command = cmd
        except (ValueError, KeyError, TypeError):
            await _send(stream, {"ok": False, "error": "malformed control request", "exit": 2})
            return

        sending = trio.Lock()  # a command's tasks may report progress at once

        async def emit(event: dict[str, Any]) -> None:
            async with sending:
                await _send(stream, {"event": event})

        command = commands.get(cmd)
        try:
            if command is None:
                raise ControlError(f"unknown control command {cmd!r}", 2)
            reply: dict[str, Any] = {"ok": True, "result": await command(args, emit)}
        except Exception as exc:
            failed = _error_reply(cmd, _single(exc))
            if failed is None:
                return  # the CLI went away (Ctrl-C): nobody to answer
            reply = failed
        try:
            async with sending:
                await _send(stream, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


class _Args(dict[str, Any]):
    """A command's arguments: one it needs and was not given is a usage error that names it."""

    command = ""

    def __missing__(self, key: str) -> Any:
        raise ControlError(f"{self.command}: the argument {key!r} is missing", 2)


def _single(exc: BaseException) -> BaseException:
    """A command that ran tasks raises an exception group; one with a single leaf is that leaf."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_reply(cmd: str, exc: BaseException) -> dict[str, Any] | None:
    """The one-line answer to a failed command; None if the client is gone."""
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError) or (
            isinstance(exc, BaseExceptionGroup)
            and exc.subgroup((trio.BrokenResourceError, trio.ClosedResourceError)) is not None):
        return None
    if isinstance(exc, ControlError):
        return {"ok": False, "error": str(exc), "exit": exc.exit_code}
    if isinstance(exc, ValueError | LookupError | p.MalformedEncoding):
        return {"ok": False, "error": _msg(exc), "exit": 2}
    if isinstance(exc, TypeError):  # where a client's JSON meets the command's conversions
        log.debug("control command %s: an argument of the wrong type", cmd, exc_info=exc)
        return {"ok": False, "error": f"{cmd}: an argument has the wrong type ({exc})", "exit": 2}
    if isinstance(exc, p.ShardnetError | OSError | StoreError):
        return {"ok": False, "error": _msg(exc), "exit": 1}
    log.error("control command %s failed", cmd, exc_info=exc)  # a bug: report it, keep the node up
    return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}", "exit": 1}


def _msg(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _send(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    await stream.send_all((json.dumps(obj) + "\n").encode())
