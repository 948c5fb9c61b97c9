"""The chaos campaign: real node processes SIGKILLed at random points of every phase."""

from __future__ import annotations

import pytest

#: Per phase, how many kills fell at each point (the test fills it; conftest prints it).
RESULTS = pytest.StashKey[dict[str, dict[str, int]]]()
