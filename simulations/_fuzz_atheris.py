"""One decoder under atheris (libFuzzer), run as
``python -m shardnet.simulations._fuzz_atheris SPEC`` by :func:`._fuzz._atheris`.

SPEC is JSON: target, inputs, seed, coverage, out (where the result goes), work (a
directory of this run's own). libFuzzer ends the process when it has run its inputs,
without returning and without ``atexit``, so the result is written from inside the
callback, at the last input. The decoders are imported under atheris's instrumentation
(its coverage feedback); coverage.py, when asked, starts after the seeds are built, so
that it counts what the inputs reached.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any


def main(argv: list[str]) -> None:
    import atheris

    spec: dict[str, Any] = json.loads(argv[1])
    with atheris.instrument_imports(include=["shardnet"]):
        from shardnet.simulations import _fuzz, _fuzz_engines

    seeds, parse = _fuzz._records()[spec["target"]]
    corpus = pathlib.Path(spec["work"]) / "seeds"
    corpus.mkdir()
    for k, s in enumerate(seeds):
        (corpus / f"{k}.bin").write_bytes(s)
    n = int(spec["inputs"])
    out = _fuzz.Outcome(spec["target"], "atheris")
    reach = _fuzz_engines.Reach(_fuzz.DECODER_CODE, on=bool(spec["coverage"]))

    def one(data: bytes) -> None:
        if out.inputs >= n:
            return
        _fuzz.check_decoder(out, parse, data)
        if out.inputs == n:
            reach.__exit__(None, None, None)
            pathlib.Path(spec["out"]).write_text(json.dumps({
                "seeds": len(seeds), "inputs": out.inputs, "refused": out.refused, "found": out.found,
                "findings": [{"error": f.error, "data": f.data.hex()} for f in out.findings],
                "lines": sorted(reach.lines), "arcs": sorted(reach.arcs)}))

    # -atheris_runs counts libFuzzer's first, empty input too: n + 1 calls, the result
    # written at the n-th.
    atheris.Setup([argv[0], f"-atheris_runs={n + 1}", f"-seed={int(spec['seed']) % (1 << 31) + 1}",
                   f"-artifact_prefix={spec['work']}/",
                   f"-max_len={_fuzz_engines.MAX_INPUT}", "-rss_limit_mb=4096", "-print_final_stats=0",
                   str(corpus)], one)
    reach.__enter__()
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
