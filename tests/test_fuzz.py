"""The fuzz campaign in CI (simulations/_fuzz.py; `shardnet bench fuzz` runs 100k a target):
5,000 mutated inputs for each decoder and 1,000 for each stream handler of a grid node, and
every input kept in tests/fuzz-corpus replayed. A decoder refuses bad input only with its
documented errors, a handler only with a refusal."""

from __future__ import annotations

import json
import pathlib

from shardnet.simulations import _fuzz
from shardnet.simulations._local import run_cli


def test_every_decoder_refuses_5000_mutations_cleanly() -> None:
    outcomes = _fuzz.fuzz_decoders(5000, seed=20261204)
    assert len(outcomes) >= 13
    assert {o.target: [f.error for f in o.findings][:3] for o in outcomes if o.findings} == {}
    assert all(o.refused > o.inputs // 2 for o in outcomes), [(o.target, o.refused) for o in outcomes]


def test_every_stream_handler_refuses_1000_mutations_cleanly() -> None:
    outcomes = _fuzz.fuzz_handlers(1000, seed=20261204)
    names = {o.target for o in outcomes}
    assert {"deliver/1", "release/2", "release/1", "epoch/1", "sync/1", "possession/1"} <= names, names
    assert {o.target: [f.error for f in o.findings][:3] for o in outcomes if o.findings} == {}


def test_the_kept_corpus_replays_without_a_finding() -> None:
    kept = sorted(_fuzz.CORPUS.glob("*/*.bin"))
    assert kept  # a share file with a non-ASCII checksum once raised TypeError, not a refusal
    assert _fuzz.replay() == []


def test_bench_fuzz_runs_from_the_cli(tmp_path: pathlib.Path) -> None:
    r = run_cli("bench", "fuzz", "--inputs", "200", "--corpus", str(tmp_path / "c"), "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    assert len(result["targets"]) >= 25 and all(t["inputs"] == 200 for t in result["targets"])
    assert "0 findings" in r.stdout.splitlines()[-1] and not (tmp_path / "c").exists()
