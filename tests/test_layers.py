"""node/ and simulations/ use protocol/ through its public surface only.

``shardnet.protocol``'s ``__init__`` names what callers may use (house style
5); its ``_modules`` are private. Attribute access counts too: ``p._codec.x``
reaches into a private module as surely as an import does.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def private_uses(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("shardnet.protocol._"):
                found.append(f"{node.lineno}: from {node.module}")
            elif node.module == "shardnet.protocol":
                found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("shardnet.protocol._")]
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and isinstance(node.value, ast.Name) and node.value.id == "p"):
            found.append(f"{node.lineno}: p.{node.attr}")
    return found


def test_node_and_simulations_use_only_protocols_public_surface() -> None:
    offenders = {}
    for folder in ("node", "simulations"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if uses := private_uses(path):
                offenders[str(path.relative_to(ROOT))] = uses
    assert offenders == {}


def test_the_check_sees_each_kind_of_private_use(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from shardnet.protocol._codec import want\nfrom shardnet.protocol import _vss\n"
                 "import shardnet.protocol._group\nfrom shardnet import protocol as p\np._records.peer_id_of\n"
                 "from shardnet.protocol import Keyset\np.Keyset\n")
    assert private_uses(f) == ["1: from shardnet.protocol._codec", "2: import _vss",
                               "3: import shardnet.protocol._group", "5: p._records"]
