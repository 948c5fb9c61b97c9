"""protocol/ must stay free of IO: it never imports trio, libp2p, sqlite or sockets."""

import ast
import pathlib

FORBIDDEN = {"trio", "libp2p", "sqlite3", "sqlite_utils", "socket", "asyncio", "anyio", "shardnet.node"}
PROTOCOL = pathlib.Path(__file__).resolve().parent.parent / "protocol"


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_protocol_imports_no_io() -> None:
    files = sorted(PROTOCOL.glob("*.py"))
    assert len(files) > 5
    offenders = {}
    for f in files:
        bad = {m for m in imported_modules(f) if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN}
        if bad:
            offenders[f.name] = bad
    assert offenders == {}


def test_the_check_catches_an_io_import(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import trio\nfrom sqlite3 import connect\n")
    assert imported_modules(f) == {"trio", "sqlite3"}
