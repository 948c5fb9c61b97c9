"""What one peer may make a custodian keep: the operator's quotas, with defaults.

Set in the home's ``config.json`` under ``"limits"`` (any of the keys below; the
others keep their defaults). Past a quota the record is refused and nothing of it is
stored: a delivery gets a signed "refused" receipt, a request is dropped, a keyset
notice is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    keysets_per_owner: int = 1000  # keysets one owner may have this custodian hold
    bytes_per_owner: int = 64 * MIB  # their records and sealed shards, together
    live_requests_per_requester: int = 32  # requests of one requester not yet expired
    known_keysets_per_owner: int = 1000  # keyset records one owner sends an approver or authority

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """From a config's ``limits`` object; ValueError naming a bad key or value."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, dict):
            raise ValueError("'limits' must be an object of quotas")
        known = {f.name for f in fields(cls)}
        for key, value in cfg.items():
            if key not in known:
                raise ValueError(f"'limits': unknown quota {key!r} (known: {', '.join(sorted(known))})")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"'limits': {key} must be a whole number of at least 1, got {value!r}")
        return cls(**cfg)


DEFAULT_LIMITS = Limits()
