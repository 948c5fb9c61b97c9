"""The fuzz campaign in CI (simulations/_fuzz.py; `shardnet bench fuzz` runs 100k a target):
5,000 inputs for each decoder, each stream handler and each gossip validator of a grid node,
Hypothesis's inputs over every one of them, atheris on two decoders, and every input kept in
tests/fuzz-corpus replayed. A decoder refuses bad input only with its documented errors, a
handler only with a refusal, a validator only by returning False."""

from __future__ import annotations

import inspect
import json
import pathlib

import pytest

from shardnet.node import _epochs
from shardnet.protocol import _audit, _codec, _policy, wire
from shardnet.simulations import _fuzz
from shardnet.simulations import _fuzz_engines as engines
from shardnet.simulations._local import run_cli


def _no_findings(outcomes: list[_fuzz.Outcome]) -> dict[str, list[str]]:
    return {o.target: [f.error for f in o.findings][:3] for o in outcomes if o.findings}


def test_every_decoder_refuses_5000_mutations_cleanly() -> None:
    outcomes = _fuzz.fuzz_decoders(5000, seed=20261204)
    assert len(outcomes) >= 41
    assert _no_findings(outcomes) == {}
    assert all(o.refused > o.inputs // 2 for o in outcomes), [(o.target, o.refused) for o in outcomes]


def test_every_decoder_starts_from_seeds_it_accepts() -> None:
    """Seeds a decoder refuses would make every mutation shallow."""
    for name, (seeds, parse) in _fuzz._records().items():
        assert seeds, name
        for seed in seeds:
            parse(seed)


def test_every_stream_handler_and_validator_refuses_5000_mutations_cleanly() -> None:
    outcomes = _fuzz.fuzz_handlers(5000, seed=20261204)
    protocols = {v.id.split("/", 2)[-1] for v in vars(wire).values() if isinstance(v, wire.StreamProtocol)}
    topics = {"gossip:" + t.name.split("/", 1)[-1] for t in wire.TOPICS}
    assert {o.target for o in outcomes} == protocols | topics
    assert [o.target for o in outcomes if o.seeds == 0] == []  # each from seeds of its own
    assert _no_findings(outcomes) == {}


def test_the_epoch_frames_reach_past_the_plan_checks() -> None:
    """The plans were once a minute past their deadline when fuzzed: every frame was
    refused as stale before deal, echo or cosign."""
    [epoch] = [o for o in _fuzz.fuzz_handlers(300, seed=2, coverage=True) if o.target == "epoch/1"]
    lines, start = inspect.getsourcelines(_epochs)
    for text in ("return self.deal(plan, now)", "return self.echo(plan, parts, now)",
                 "return self.cosign(plan, parts, now)", "receipts = self.accept_commit("):
        line = start + next(i for i, ln in enumerate(lines) if text in ln)
        assert ("node/_epochs.py", line) in epoch.lines, text


def test_kept_handler_inputs_are_fed_first_and_unknown_folders_are_findings(tmp_path: pathlib.Path) -> None:
    outcomes = _fuzz.fuzz_handlers(0, seed=1, first={"deliver_1": [b"a", b"b"], "gossip_vote_1": [b"c"]})
    fed = {o.target: o.inputs for o in outcomes if o.inputs}
    assert fed == {"deliver/1": 2, "gossip:vote/1": 1}
    (tmp_path / "deliver_1").mkdir()
    (tmp_path / "deliver_1" / "x.bin").write_bytes(b"not a delivery")
    (tmp_path / "renamed_target").mkdir()
    (tmp_path / "renamed_target" / "y.bin").write_bytes(b"y")
    assert [f.error.split(":")[0] for f in _fuzz.replay(tmp_path)] == ["UnknownTarget"]


def test_hypothesis_inputs_over_every_target() -> None:
    """The hypothesis engine, a few hundred inputs a target (the bench runs 100k)."""
    decoders = _fuzz.fuzz_decoders(100, seed=3, engine="hypothesis")
    handlers = _fuzz.fuzz_handlers(100, seed=3, engine="hypothesis")
    assert len(decoders) >= 41 and len(handlers) >= 19
    assert all(o.inputs >= 60 and o.engine == "hypothesis" for o in decoders + handlers)
    assert _no_findings(decoders + handlers) == {}


def _line_of(module: object, text: str) -> tuple[str, int]:
    lines, start = inspect.getsourcelines(module)  # type: ignore[arg-type]
    name = "protocol/" + pathlib.Path(inspect.getfile(module)).name  # type: ignore[arg-type]
    return name, start + next(i for i, ln in enumerate(lines) if text in ln)


def test_the_mutation_engine_reaches_what_only_libfuzzer_did() -> None:
    """What atheris alone reached when the engines were compared: at 10k inputs, a map
    whose keys cannot be sorted (decode's re-encode fails) and a record at an unsupported
    version; at 100k, nesting past the depth caps of the codec and of Cedar policies. The
    structural and repeating mutations were added for them."""
    outcomes = _fuzz.fuzz_decoders(3000, seed=5, only={"decode", "request", "policy", "audit-body"},
                                   coverage=True)
    reached = set().union(*(o.lines for o in outcomes))
    for module, text in ((_codec, 'raise MalformedEncoding("not canonical msgpack") from None'),
                         (_codec, "unsupported version"), (_codec, "levels deep"),
                         (_policy, "nests brackets"), (_audit, "raise MalformedEncoding(str(exc)) from None")):
        assert _line_of(module, text) in reached, text
    assert all(len(o.arcs) > len(o.lines) > 10 for o in outcomes)


def test_a_validator_that_raises_or_answers_oddly_is_a_finding() -> None:
    def validator(author: str, data: bytes) -> bool:
        if data[:1] == b"\x00":
            raise KeyError("boom")
        return len(data) % 2 == 0 if data[:1] != b"\x01" else None  # type: ignore[return-value]

    out = _fuzz._validator_campaign("/shardnet/x/topic/1", validator, {"peer": [b"\x00abc", b"\x01x", b"ok"]},
                                    2000, 1, "mutation", False, "peer")
    errors = {f.error.split(":")[0] for f in out.findings}
    assert out.inputs == 2000 and errors == {"KeyError", "TypeError"}, errors
    assert len(out.findings) == 2 < out.found  # the first of each kind kept, all counted
    assert out.refused + out.found < out.inputs  # and some were accepted


def test_the_kept_corpus_replays_without_a_finding() -> None:
    kept = sorted(_fuzz.CORPUS.glob("*/*.bin"))
    assert kept  # a share file with a non-ASCII checksum once raised TypeError, not a refusal
    assert _fuzz.replay() == []


def test_bench_fuzz_runs_from_the_cli(tmp_path: pathlib.Path) -> None:
    r = run_cli("bench", "fuzz", "--inputs", "200", "--corpus", str(tmp_path / "c"), "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    assert len(result["targets"]) >= 60 and all(t["inputs"] == 200 and t["seeds"] for t in result["targets"])
    assert "0 findings" in r.stdout.splitlines()[-1] and not (tmp_path / "c").exists()


def test_bench_fuzz_compares_atheris_with_the_mutation_engine(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the fuzz extra, which make installs")
    r = run_cli("bench", "fuzz", "--inputs", "2000", "--engine", "mutation,atheris", "--coverage",
                "--only", "decode,keyset", "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    got = {(t["target"], t["engine"]): t for t in result["targets"]}
    assert set(got) == {(t, e) for t in ("decode", "keyset") for e in ("mutation", "atheris")}
    assert all(t["inputs"] == 2000 and t["findings"] == 0 and t["lines"] > 10 and t["seeds"] for t in got.values())
    assert got["keyset", "atheris"]["refused"] > 1000  # it ran the decoder, and the decoder refused
    cov = result["coverage"]["decoders"]
    assert set(cov["engines"]) == {"mutation", "atheris"}
    assert all(x.startswith("protocol/") for e in cov["engines"].values() for x in e["only_lines"])
    assert "coverage over the decoders: union" in r.stdout


def test_bench_fuzz_refuses_unknown_engines_and_targets() -> None:
    for args, why in ((["--engine", "afl"], "expected one or more of mutation"),
                      (["--only", "nope"], "unknown target nope"),
                      (["--engine", "atheris", "--only", "handlers"], "atheris drives the decoders only")):
        r = run_cli("bench", "fuzz", *args)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_hypothesis_engine_is_seeded() -> None:
    a = engines.hypothesis_inputs(7, [b"\x92\x01\x02"], 50)
    assert a == engines.hypothesis_inputs(7, [b"\x92\x01\x02"], 50) and len(set(a)) > 10
