"""What every CLI command shares: exit codes, the errors that map to them, the
argument parser class, argument types and ``--json`` output.

Both ``cli.py`` (the entry point and the offline commands) and
``_commands.py`` (the node commands) import from here, and never from each other.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, NoReturn

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or bad input: exit 2."""


class Failure(Exception):
    """The command could not do its job: exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, sort_keys=True))
    else:
        print(human)


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v
