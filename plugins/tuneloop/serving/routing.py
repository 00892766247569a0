"""Which arm answers a request: production, or the canary with its traffic share.

A request's key (a user or session id; a request id where there is none) is hashed with the canary's version
(SHA-256, the first 8 bytes as a number in [0, 1)); the request goes to the canary when that number is below the
canary's share. So:

- the same key always gets the same arm for one canary, on any serving process, with no shared state -- the
  router scales out with nothing to synchronise;
- raising the share only moves keys from production to the canary, never back (a gradual rollout keeps its
  users);
- a new canary (another version) draws a fresh set of keys, so no user is always the guinea pig.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Arm = Literal["production", "canary"]
_SCALE = float(2**64)


@dataclass(frozen=True)
class TrafficSplit:
    """Where traffic goes: ``production`` always; ``canary`` (a version) with ``canary_percent`` of the keys."""

    production: str
    canary: str | None = None
    canary_percent: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent: must be between 0 and 100, got {self.canary_percent!r}")
        if self.canary is None and self.canary_percent:
            raise ValueError(f"canary_percent: {self.canary_percent:g} with no canary version")
        if self.canary is not None and self.canary == self.production:
            raise ValueError(f"canary: version {self.canary} is production already")

    def arm(self, key: str) -> Arm:
        """The arm that answers the request keyed ``key``."""
        if self.canary is None or not self.canary_percent:
            return "production"
        return "canary" if position(key, salt=self.canary) * 100 < self.canary_percent else "production"

    def version(self, key: str) -> str:
        """The model version that answers the request keyed ``key``."""
        return self.canary if self.arm(key) == "canary" else self.production  # type: ignore[return-value]


def position(key: str, *, salt: str) -> float:
    """Where ``key`` falls in [0, 1) for this ``salt``: uniform over keys, the same every time."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"key: a request needs a non-empty key (a user, session or request id), got {key!r}")
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE
