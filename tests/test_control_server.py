"""The control server (node/_control_server.py): command table, errors, clients that vanish."""

from __future__ import annotations

import json
import pathlib
import socket
from typing import Any

import trio

from shardnet.node._control_server import ControlError, bind_control, serve_control
from shardnet.node._home import Home


def ask(path: str, cmd: str, read_one_then_hang_up: bool = False,
        args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall((json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode())
        f = s.makefile("rb")
        lines = [json.loads(f.readline())]
        if read_one_then_hang_up:
            return lines
        while "ok" not in lines[-1]:
            lines.append(json.loads(f.readline()))
        return lines


async def test_table_errors_and_a_client_that_hangs_up_mid_command(tmp_path: pathlib.Path) -> None:
    home = Home(tmp_path)
    home.run_dir.mkdir()

    async def chatty(args: dict[str, Any], emit: Any) -> Any:
        async with trio.open_nursery() as n:  # a command that runs tasks: errors come as groups
            async def progress() -> None:
                for i in range(10_000):
                    await emit({"i": i})
                    await trio.sleep(0.01)
            n.start_soon(progress)
        return "never"

    async def usage(args: dict[str, Any], emit: Any) -> Any:
        raise ValueError("bad input")

    async def fail(args: dict[str, Any], emit: Any) -> Any:
        raise ControlError("it did not work", 1)

    async def bug(args: dict[str, Any], emit: Any) -> Any:
        return 1 / 0

    async def ping(args: dict[str, Any], emit: Any) -> Any:
        return "pong"

    async def typed(args: dict[str, Any], emit: Any) -> Any:
        return int(args["n"]) + 1

    table = {"chatty": chatty, "usage": usage, "fail": fail, "bug": bug, "ping": ping, "typed": typed}
    listener = bind_control(home)
    path = str(home.control_socket)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_control, listener, table, nursery)
        assert await trio.to_thread.run_sync(ask, path, "chatty", True) == [{"event": {"i": 0}}]
        await trio.sleep(0.2)  # the command now writes to a closed connection
        assert (await trio.to_thread.run_sync(ask, path, "ping"))[-1] == {"ok": True, "result": "pong"}
        assert (await trio.to_thread.run_sync(ask, path, "usage"))[-1] == {"ok": False, "error": "bad input",
                                                                          "exit": 2}
        assert (await trio.to_thread.run_sync(ask, path, "fail"))[-1]["exit"] == 1
        last = (await trio.to_thread.run_sync(ask, path, "bug"))[-1]
        assert last["exit"] == 1 and last["error"].startswith("internal error: ZeroDivisionError")
        # A client's arguments: one missing, or of the wrong type, is a usage error that says so.
        assert (await trio.to_thread.run_sync(ask, path, "typed"))[-1] == {
            "ok": False, "error": "typed: the argument 'n' is missing", "exit": 2}
        last = (await trio.to_thread.run_sync(ask, path, "typed", False, {"n": [1]}))[-1]
        assert last["exit"] == 2 and last["error"].startswith("typed: an argument has the wrong type (")
        last = (await trio.to_thread.run_sync(ask, path, "nope"))[-1]
        assert last["exit"] == 2 and "unknown control command" in last["error"]
        nursery.cancel_scope.cancel()
    listener.socket.close()
