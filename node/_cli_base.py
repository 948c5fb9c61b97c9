"""What every CLI command shares: exit codes, the errors that map to them, the
argument parser class, argument types and ``--json`` output.

Both ``cli.py`` (the entry point and the offline commands) and
``_commands.py`` (the node commands) import from here, and never from each other.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

from ._clock import MAX_DURATION

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or bad input: exit 2."""


class Failure(Exception):
    """The command could not do its job: exit 1."""


class Unanswered(Failure):
    """The node went away before it answered: the command may or may not have taken effect."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def emit(args: argparse.Namespace, data: Any, human: str | Callable[[], str]) -> None:
    """``data`` as JSON with ``--json``, else the human text (built only then, when a callable)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, sort_keys=True))
    else:
        print(human() if callable(human) else human)


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


_DURATION = re.compile(r"^(\d+)([smhdwy])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 90d, 12h, 30m or 3600s, got {text!r}")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text.strip()} is longer than the 100y a duration may be")
    return seconds


def parse_within(text: str) -> int | None:
    """A duration, or ``never``."""
    return None if text.strip() == "never" else parse_duration(text)


def spell_duration(seconds: int | None) -> str:
    """Seconds as the largest unit that divides them (``parse_duration``'s own), or ``never``."""
    if seconds is None:
        return "never"
    unit = next(u for u in "ywdhms" if seconds % _UNITS[u] == 0)
    return f"{seconds // _UNITS[unit]}{unit}"
