"""The hot-path hook for metrics: one call per run end, recovery and cron slot.

The processor owns one `Telemetry`; the worker, the recovery and the cron scheduler call it.
With no observer attached (metrics off) each call is one attribute check: nothing is imported,
nothing is computed. `job_processor.metrics` attaches a Prometheus observer. An observer that
raises is logged once and never breaks a job.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

Doc = dict[str, Any]
CronOutcome = Literal["run", "missed", "skipped"]


class Observer(Protocol):
    def run_ended(self, claimed: Doc, final: Doc, duration_ms: int | None) -> None:
        """A run's final write landed: `claimed` is the job as claimed (scheduled_for,
        run_started_at), `final` as written (status: finished, errored, killed, paused, or
        pending again for a retry)."""

    def recovered(self, doc: Doc, final: Doc) -> None:
        """A crashed (or lost) run was recovered by this process."""

    def cron_slot(self, name: str, outcome: CronOutcome) -> None:
        """This process created a slot's task ("run"), recorded it as missed, or skipped it."""


class Telemetry:
    def __init__(self) -> None:
        self.observers: list[Observer] = []
        self._failed: set[int] = set()

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def run_ended(self, claimed: Doc, final: Doc, duration_ms: int | None) -> None:
        for o in self.observers:
            self._call(o, "run_ended", claimed, final, duration_ms)

    def recovered(self, doc: Doc, final: Doc) -> None:
        for o in self.observers:
            self._call(o, "recovered", doc, final)

    def cron_slot(self, name: str, outcome: CronOutcome) -> None:
        for o in self.observers:
            self._call(o, "cron_slot", name, outcome)

    def _call(self, observer: Observer, method: str, *args: Any) -> None:
        try:
            getattr(observer, method)(*args)
        except Exception:  # metrics must never break a job
            if id(observer) not in self._failed:
                self._failed.add(id(observer))
                logging.getLogger("job_processor").exception(
                    "telemetry_observer_failed", extra={"observer": type(observer).__name__}
                )
