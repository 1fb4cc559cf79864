"""Protocols that lower code needs from higher code: the narrow view a module takes of an
object built above it, so that no import points up.

(`models.Processor`, what a handler reaches as `job.processor`, lives beside `Job` in `models`.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Protocol

from .clock import Clock
from .settings import Settings


class ClaimingWorker(Protocol):
    """What the limiter (`engine.limiter`) needs of the worker it claims for: who it is, what
    it must not claim, its clock and settings, and how to start a claimed job or wake it."""

    worker_id: str
    paused: frozenset[str]
    clock: Clock
    settings: Settings
    wake: asyncio.Event

    def start_claimed(self, doc: dict[str, Any]) -> bool: ...

    def may_claim(self, worker_id: str) -> bool:
        """Whether a claim under `worker_id` may still be made (this worker still has that id,
        and no one can have declared it dead)."""
        ...

    def wake_at(self, when: dt.datetime) -> None: ...

    def claim_bound(self) -> float | None:
        """Seconds within which a claim's commands are sent or given up (the lease's end);
        None: no bound of its own."""
        ...
