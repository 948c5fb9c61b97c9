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


# -- time and randomness come from the composition root ---------------------------------

#: Calls that read the OS clock or random source. Only node/_clock.py may make them.
FORBIDDEN_CALLS = {
    ("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "monotonic_ns"),
    ("time", "perf_counter"), ("time", "perf_counter_ns"), ("datetime", "now"), ("datetime", "utcnow"),
    ("datetime", "today"), ("os", "urandom"), ("os", "getrandom"), ("uuid", "uuid1"), ("uuid", "uuid4"),
}
FORBIDDEN_MODULES = {"random", "secrets"}


def clock_and_rng_uses(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{node.lineno}: from {node.module}")
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if (node.module.split(".")[-1], a.name) in FORBIDDEN_CALLS]
        elif isinstance(node, ast.Attribute):
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
            if (name, node.attr) in FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: {name}.{node.attr}")
    return found


def test_node_reads_no_clock_and_no_randomness_outside_its_composition_root() -> None:
    offenders = {}
    for path in sorted((ROOT / "node").glob("*.py")):
        if path.name == "_clock.py":
            continue
        if uses := clock_and_rng_uses(path):
            offenders[path.name] = uses
    assert offenders == {}


def test_the_clock_check_sees_each_kind_of_use(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nimport random\nfrom os import urandom\nimport datetime\n"
                 "time.monotonic()\ndatetime.datetime.now()\nfrom secrets import token_hex\nimport trio\n"
                 "trio.current_time()\ndatetime.datetime.fromtimestamp(0)\n")
    assert sorted(clock_and_rng_uses(f)) == ["2: import random", "3: from os import urandom",
                                             "5: time.monotonic", "6: datetime.now", "7: from secrets"]


# -- node/ needs simulations/ only for the commands that run them -------------------------


def module_level_imports(path: pathlib.Path) -> set[str]:
    """Modules imported when the file is imported (not inside a function body)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)  # class bodies run at import time; function bodies do not
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return names


def test_node_imports_simulations_only_lazily() -> None:
    eager = {path.name: sorted(m for m in module_level_imports(path) if m.startswith("shardnet.simulations"))
             for path in sorted((ROOT / "node").glob("*.py"))}
    assert {k: v for k, v in eager.items() if v} == {}
    lazy = "".join(p.read_text() for p in (ROOT / "node").glob("*.py"))
    assert "shardnet.simulations" in lazy  # the demo and bench commands do import it, inside themselves


def node_import_graph() -> dict[str, set[str]]:
    """Module-level imports between node/ modules (imports under TYPE_CHECKING excluded)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "node").glob("*.py"):
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            if isinstance(stmt, ast.ImportFrom):
                if stmt.level == 1:
                    deps |= {stmt.module} if stmt.module else {a.name for a in stmt.names}
                elif stmt.module and stmt.module.startswith("shardnet.node."):
                    deps.add(stmt.module.removeprefix("shardnet.node."))
        graph[path.stem] = deps & {p.stem for p in (ROOT / "node").glob("*.py")}
    return graph


def test_node_modules_import_each_other_without_cycles() -> None:
    graph = node_import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    # The composition root imports its parts; none of them imports it back.
    parts = {"_control_commands", "_directory_loops", "_approval_loops", "_outbox_loop", "_links"}
    assert parts <= graph["_runtime"]
    assert "_reconstruct" in graph["_control_commands"]
    assert not any("_runtime" in graph[m] for m in parts | {"_reconstruct"})


LIBP2P_SIDE = {"_net", "_bounds", "_libp2p_transport"}


def test_only_the_libp2p_transport_side_imports_libp2p() -> None:
    """Services, loops and the runtime reach peers through the Transport interface."""
    offenders = {}
    graph = node_import_graph()
    for path in sorted((ROOT / "node").glob("*.py")):
        if path.stem in LIBP2P_SIDE:
            continue
        eager = {m for m in module_level_imports(path) if m.split(".")[0] == "libp2p"}
        eager |= graph.get(path.stem, set()) & LIBP2P_SIDE
        if eager:
            offenders[path.name] = sorted(eager)
    assert offenders == {}
