"""The ``shardnet`` command.

Exit codes: 0 success; 1 failure (one clear line on stderr); 2 bad usage or
bad input. A user never sees a traceback for bad input; ``SHARDNET_DEBUG=1``
shows one for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from shardnet import protocol as p

from ._cli_base import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Failure, Parser, UsageError, emit, positive

# -- offline -------------------------------------------------------------------------


def cmd_split(args: argparse.Namespace) -> int:
    from ._clock import system_clock, system_rng
    from ._offline import split_file

    res = split_file(args.input, args.threshold, args.shares, args.out_dir, kem=args.kem, now=system_clock(),
                     rng=system_rng)
    lines = [
        f"keyset {res.keyset.id_hex}: {res.keyset.threshold}-of-{res.keyset.shares}, {res.keyset.kem}",
        f"  keyset file  {res.keyset_file}",
        *[f"  share file   {f}" for f in res.share_files],
        f"Any {res.keyset.threshold} share files and the keyset file recover the key "
        "(shardnet combine). Store each share file with a different custodian.",
    ]
    emit(args, res.to_json(), "\n".join(lines))
    return EXIT_OK


def cmd_combine(args: argparse.Namespace) -> int:
    from ._offline import combine_files

    res = combine_files(args.keyset, args.share, args.out, force=args.force)
    for path, why in res.skipped:
        print(f"shardnet: warning: {path}: {why}; skipped", file=sys.stderr)
    for b in res.bad:
        print(f"shardnet: warning: {b.source}: invalid share (index {b.index}), skipped", file=sys.stderr)
    emit(args, res.to_json(),
          f"recovered {res.size}-byte key into {res.out} from {len(res.used)} shares: {', '.join(res.used)}")
    return EXIT_OK


def cmd_bench_sharing(args: argparse.Namespace) -> int:
    from shardnet.simulations import _sharing_bench as _bench

    def progress(msg: str) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    result = _bench.run_sharing_bench(progress=progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    _write_json(args.json, result)
    print(_bench.format_report(result))
    return EXIT_OK


def _write_json(path: str | None, result: Any) -> None:
    """A bench's ``--json FILE``: the results, written atomically."""
    if path:
        from ._files import write_atomic

        write_atomic(pathlib.Path(path), json.dumps(result, indent=1).encode(), 0o644, overwrite=True)


def cmd_bench_network(args: argparse.Namespace) -> int:
    from shardnet.simulations._netbench import format_network_report, run_network_bench

    result = run_network_bench(runs=args.runs, progress=lambda m: print(f"... {m}", file=sys.stderr))
    _write_json(args.json, result)
    print(format_network_report(result))
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return v


def _minutes(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes, got {text!r}") from None
    if not 0 < v <= 24 * 60:
        raise argparse.ArgumentTypeError(f"expected minutes above 0 and at most a day (1440), got {text}")
    return v


def _soak_nodes(text: str) -> int:
    v = positive(text)
    if not 5 <= v <= 10:
        raise argparse.ArgumentTypeError(f"expected 5 to 10 nodes, got {v}")
    return v


def _fuzz_engines(text: str) -> list[str]:
    from shardnet.simulations._fuzz_engines import ENGINES

    got = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in got if e not in ENGINES]
    if bad or not got:
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(ENGINES)}, got {text!r}")
    return got


def _fuzz_targets(text: str) -> set[str]:
    from shardnet.simulations._fuzz import decoder_names

    known = [*decoder_names(), "handlers"]
    got = {t.strip() for t in text.split(",") if t.strip()}
    bad = sorted(got - set(known))
    if bad or not got:
        raise argparse.ArgumentTypeError(f"unknown target {', '.join(bad) if bad else repr(text)} (one of {', '.join(known)})")
    return got


def cmd_bench_grid(args: argparse.Namespace) -> int:
    from shardnet.simulations._grid_bench import format_grid_report, run_grid_bench

    result = run_grid_bench(nodes=args.nodes, imports=args.imports, reconstructions=args.reconstructions,
                            republish=args.republish, seed=args.seed,
                            progress=lambda m: print(f"... {m}", file=sys.stderr))
    _write_json(args.json, result)
    print(format_grid_report(result))
    return EXIT_OK


def cmd_bench_membership(args: argparse.Namespace) -> int:
    from shardnet.simulations._membership_bench import (
        format_membership_report,
        run_membership_bench,
    )

    result = run_membership_bench(runs=args.runs, grid_nodes=args.grid_nodes, junk=args.junk,
                                  progress=lambda m: print(f"... {m}", file=sys.stderr))
    _write_json(args.json, result)
    print(format_membership_report(result))
    return EXIT_OK


def _sizes(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or any(not 3 <= n <= 100 for n in out):
        raise argparse.ArgumentTypeError("expected sizes 3..100, comma-separated, e.g. 5,10,20")
    return out


def cmd_bench_epoch(args: argparse.Namespace) -> int:
    say = lambda m: print(f"... {m}", file=sys.stderr)  # noqa: E731
    if args.propagation:
        from shardnet.simulations import _propagation_bench as pb

        prop: dict[str, Any] = {"grid": pb.run_propagation(args.propagation, say=say)}
        if args.processes:
            prop["processes"] = pb.run_propagation_processes(10, say=say)
        _write_json(args.json, prop)
        print(pb.format_propagation(prop["grid"]))
        if "processes" in prop:
            print(pb.format_propagation_processes(prop["processes"]))
        return EXIT_OK
    if args.bulk:
        from shardnet.simulations._epoch_bulk import format_bulk_report, run_bulk_bench

        bulk = run_bulk_bench(keysets=args.bulk, process_keysets=args.bulk_processes if args.processes else 0,
                              say=say)
        _write_json(args.json, bulk)
        print(format_bulk_report(bulk))
        return EXIT_OK
    from shardnet.simulations._epoch_bench import format_epoch_report, run_epoch_bench

    result = run_epoch_bench(ns=args.n, processes=args.processes, say=say)
    _write_json(args.json, result)
    print(format_epoch_report(result))
    return EXIT_OK


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    import importlib.util

    from shardnet.simulations._fuzz import EngineFailed, format_fuzz_report, run_fuzz

    if args.only == {"handlers"} and args.engine == ["atheris"]:
        raise UsageError("atheris drives the decoders only: with --only handlers, add --engine mutation or hypothesis")
    needs = [("atheris", "atheris" in args.engine), ("hypothesis", "hypothesis" in args.engine),
             ("coverage", args.coverage)]
    for module, wanted in needs:
        if wanted and importlib.util.find_spec(module) is None:
            raise Failure(f"{module} is not installed: pip install -e '.[test,fuzz]' (make installs both)")
    try:
        result = run_fuzz(inputs=args.inputs, seed=args.seed,
                          corpus=pathlib.Path(args.corpus) if args.corpus else None,
                          say=lambda m: print(f"... {m}", file=sys.stderr), engines_=args.engine,
                          coverage=args.coverage, only=args.only)
    except EngineFailed as exc:
        raise Failure(f"the fuzz engine broke, not a target: {exc}") from None
    _write_json(args.json, result)
    print(format_fuzz_report(result))
    return EXIT_FAIL if any(t["findings"] for t in result["targets"]) else EXIT_OK


def cmd_bench_tlog(args: argparse.Namespace) -> int:
    from shardnet.simulations._tlog_bench import format_tlog_report, run_tlog_bench

    result = run_tlog_bench(appends=args.appends, sizes=tuple(args.sizes), say=lambda m: print(f"... {m}",
                                                                                                 file=sys.stderr))
    _write_json(args.json, result)
    print(format_tlog_report(result))
    return EXIT_OK


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from shardnet.simulations._soak import format_soak_report, run_soak

    result = run_soak(minutes=args.minutes, nodes=args.nodes, every=args.every, restart_every=args.restart_every,
                      sample_every=args.sample_every, say=lambda m: print(f"... {m}", file=sys.stderr))
    _write_json(args.json, result)
    print(format_soak_report(result))
    return EXIT_FAIL if result["errors"] or not result["audit_ok"] else EXIT_OK


def cmd_bench_rewrap(args: argparse.Namespace) -> int:
    from shardnet.simulations._rewrap_bench import format_rewrap_report, run_rewrap_bench

    result = run_rewrap_bench(shards=args.shards, runs=args.runs, say=lambda m: print(f"... {m}", file=sys.stderr))
    _write_json(args.json, result)
    print(format_rewrap_report(result))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("shardnet")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="shardnet", description="Peer-to-peer custodian network for master keys.")
    parser.add_argument("--version", action="version", version=f"shardnet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    sp = sub.add_parser("split", help="split a key file into share files (offline)")
    sp.add_argument("--in", dest="input", required=True, metavar="KEYFILE", help="key file, or - for stdin")
    sp.add_argument("--threshold", "-t", type=positive, required=True, metavar="T")
    sp.add_argument("--shares", "-n", type=positive, required=True, metavar="N")
    sp.add_argument("--out-dir", required=True, metavar="DIR")
    sp.add_argument("--kem", choices=p.KEMS, default="x25519")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_split)

    cp = sub.add_parser("combine", help="recover a key file from share files (offline)")
    cp.add_argument("--keyset", required=True, metavar="FILE")
    cp.add_argument("share", nargs="+", metavar="SHARE")
    cp.add_argument("--out", required=True, metavar="KEYFILE")
    cp.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_combine)

    bp = sub.add_parser("bench", help="benchmarks")
    bsub = bp.add_subparsers(dest="bench", metavar="BENCH", parser_class=Parser)
    bsub.required = True
    bs = bsub.add_parser("sharing", help="split/combine against peer libraries")
    bs.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bs.set_defaults(func=cmd_bench_sharing)
    bn = bsub.add_parser("network", help="import latency, RSS, directory convergence (10 processes)")
    bn.add_argument("--runs", type=positive, default=5, metavar="N")
    bn.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bn.set_defaults(func=cmd_bench_network)
    bg = bsub.add_parser("grid", help="many real nodes in one process, in virtual time")
    bg.add_argument("--nodes", type=positive, default=100, metavar="N")
    bg.add_argument("--imports", type=positive, default=20, metavar="K")
    bg.add_argument("--reconstructions", type=positive, default=5, metavar="R")
    bg.add_argument("--republish", type=_seconds, default=60.0, metavar="S", help="descriptor republish interval")
    bg.add_argument("--seed", type=int, default=1)
    bg.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bg.set_defaults(func=cmd_bench_grid)
    bm = bsub.add_parser("membership", help="admission latency (real nodes and the grid), its cost, junk")
    bm.add_argument("--runs", type=positive, default=3, metavar="N", help="late admissions on real nodes")
    bm.add_argument("--grid-nodes", type=positive, default=1000, metavar="N")
    bm.add_argument("--junk", type=positive, default=10_000, metavar="J", help="junk descriptors offered")
    bm.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bm.set_defaults(func=cmd_bench_membership)

    be = bsub.add_parser("epoch", help="refresh and reshare round times against 2 RTT + crypto (grid), and "
                                       "with real processes")
    be.add_argument("--n", type=_sizes, default=(5, 10, 20), metavar="N,...", help="shares (default 5,10,20)")
    be.add_argument("--processes", action="store_true", help="also on loopback with real node processes")
    be.add_argument("--bulk", type=positive, metavar="K",
                    help="instead: revoke a custodian of K keysets on the grid (e.g. 1000) and time the reshares")
    be.add_argument("--propagation", type=positive, metavar="N",
                    help="instead: a membership revocation spreading over a grid of N nodes (e.g. 1000), "
                         "against the gossip mesh's shortest-path delay")
    be.add_argument("--bulk-processes", type=positive, default=200, metavar="K",
                    help="with --bulk --processes: keysets on 10 real node processes (default 200)")
    be.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    be.set_defaults(func=cmd_bench_epoch)

    bz = bsub.add_parser("fuzz", help="every decoder and stream handler, fed mutations of real inputs")
    bz.add_argument("--inputs", type=positive, default=100_000, metavar="N", help="inputs per target")
    bz.add_argument("--seed", type=int, default=1)
    bz.add_argument("--corpus", metavar="DIR", help="keep each finding's input here (tests/fuzz-corpus replays it)")
    bz.add_argument("--engine", type=_fuzz_engines, default=["mutation"], metavar="E[,E...]",
                    help="mutation (default), hypothesis, atheris (the decoders only), or several, side by side")
    bz.add_argument("--only", type=_fuzz_targets, metavar="T[,T...]",
                    help="these decoders only (and 'handlers' for the stream handlers and gossip validators)")
    bz.add_argument("--coverage", action="store_true",
                    help="measure the lines and arcs each target's inputs reached, and compare the engines")
    bz.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bz.set_defaults(func=cmd_bench_fuzz)

    bt = bsub.add_parser("tlog", help="the audit log as a Merkle tree log: appends against fsync, proof sizes "
                                      "and times at 10^3..10^6 entries")
    bt.add_argument("--appends", type=positive, default=300, metavar="N", help="appends a round (default 300)")
    bt.add_argument("--sizes", type=lambda t: [positive(x) for x in t.split(",")], default=[1000, 100_000, 1_000_000],
                    metavar="N,...", help="tree sizes for the proofs (default 1000,100000,1000000)")
    bt.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bt.set_defaults(func=cmd_bench_tlog)

    bk = bsub.add_parser("soak", help="real nodes under a steady load for minutes, one restarted every minute: "
                                      "RSS and fd slopes, errors, p50/p99")
    bk.add_argument("--minutes", type=_minutes, default=10.0, metavar="M", help="how long (default 10)")
    bk.add_argument("--nodes", type=_soak_nodes, default=10, metavar="N", help="node processes, 5 to 10 (default 10)")
    bk.add_argument("--every", type=_seconds, default=2.0, metavar="S",
                    help="seconds between operations, imports and reconstructions in turn (default 2)")
    bk.add_argument("--restart-every", type=_seconds, default=60.0, metavar="S",
                    help="seconds between node restarts, one node at a time (default 60)")
    bk.add_argument("--sample-every", type=_seconds, default=10.0, metavar="S",
                    help="seconds between RSS and fd samples (default 10)")
    bk.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bk.set_defaults(func=cmd_bench_soak)

    bw = bsub.add_parser("rewrap", help="rewrap throughput on one custodian against HPKE open + seal + sign alone")
    bw.add_argument("--shards", type=positive, default=10_000, metavar="N")
    bw.add_argument("--runs", type=positive, default=3, metavar="N")
    bw.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bw.set_defaults(func=cmd_bench_rewrap)

    from ._commands import register
    from ._sim_commands import register as register_sim

    register(sub)
    register_sim(sub)
    return parser


def _classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    from ._home import HomeError

    if isinstance(exc, (p.MalformedEncoding, p.InvalidSignature, ValueError, FileExistsError,
                        HomeError, LookupError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"{exc.filename}: no such file"
    if isinstance(exc, IsADirectoryError):
        return EXIT_USAGE, f"{exc.filename}: is a directory, not a file"
    if isinstance(exc, NotADirectoryError):
        return EXIT_USAGE, f"{exc.filename}: a part of this path is not a directory"
    if isinstance(exc, PermissionError):
        return EXIT_USAGE, f"{exc.filename}: permission denied"
    import sqlite3

    from ._control import NotRunning
    from ._store import StoreError

    if isinstance(exc, sqlite3.DatabaseError):  # past the header: a page damaged deeper in the file
        return EXIT_FAIL, f"the node's database is damaged ({exc}): restore it from a backup"

    # NotRunning says how to start the node; a StoreError what is wrong with the database.
    if isinstance(exc, (p.ShardnetError, Failure, OSError, NotRunning, StoreError)):
        return EXIT_FAIL, str(exc)
    return EXIT_FAIL, f"internal error: {type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt as exc:
        print(f"shardnet: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            return int(exc.code or 0)
        if os.environ.get("SHARDNET_DEBUG"):
            raise
        code, msg = _classify(exc)
        print(f"shardnet: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    # Run as `python -m shardnet.node.cli`: use the package's module, not a
    # second copy named __main__.
    from shardnet.node.cli import main as _main

    sys.exit(_main())
