"""Options of the chaos campaign (tests/chaos), and its figures at the end of the run."""

from __future__ import annotations

import pytest

from .chaos import RESULTS


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("chaos", "the chaos campaign of tests/chaos")
    g.addoption("--kills", type=int, default=50, metavar="N",
                help="SIGKILLs of real node processes, spread evenly over the campaign's phases (default 50)")
    g.addoption("--chaos-seed", type=int, default=13, metavar="S",
                help="seed of the kill points, the keys and the victims (default 13)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    phases = config.stash.get(RESULTS, None)
    if not phases:
        return
    terminalreporter.section(f"chaos campaign, seed {config.getoption('chaos_seed')}")
    for phase, points in phases.items():
        kills = {k: v for k, v in points.items() if not k.endswith(", ms")}
        where = "; ".join(f"{k}: {v}" for k, v in sorted(points.items()))
        terminalreporter.write_line(f"{phase}: {sum(kills.values())} kills survived ({where})")
