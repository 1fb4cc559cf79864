"""Prometheus metrics (optional extra: `pip install 'job-processor[metrics]'`).

Two kinds of series (the full list, Grafana-ready, is in docs/operations.md):

- from this process, as it runs jobs (counters and histograms): jobs ended by name and status,
  run durations, start delays (due -> started), retries, crash recoveries, cron slots run /
  missed / skipped. Fed by one call per run end (`job_processor.telemetry`).
- from the database, computed once per scrape within a time budget (gauges): jobs by name and
  status, due jobs and the oldest due age per name, live and dead workers, paused names, the
  usage of each cluster-wide limit (running, capacity, starts in the window). When the
  budget runs out, the scrape serves what it has and `job_processor_scrape_timeout` is 1.

    from job_processor import metrics
    m = metrics.enable(processor)                 # counters + database gauges
    metrics.serve(m, port=9100)                   # or: job-processor run ... --metrics-port 9100
    body = await metrics.render(m)                # the exposition text, e.g. for a /metrics route
    # a process without a processor (a dashboard): database gauges only
    m = metrics.for_database(db)
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core.clock import Clock, SystemClock, as_utc
from ..core.coverage import DEFAULT_WORKER_TIMEOUT, worker_alive
from ..core.limits import added, mask_limit_keys, top_usage
from ..core.masking import MASK
from ..core.sensitive_names import DEFAULT_SENSITIVE_FIELDS, fields_forms, name_is_sensitive
from ..core.status import TERMINAL, JobStatus
from ..core.telemetry import CronOutcome
from ..storage import Storage

S = JobStatus
Doc = dict[str, Any]
#: `Content-Type` of `render()`'s body: the text format 0.0.4, which `generate_latest` makes
#: (what prometheus_client's own server, `serve()`, announces for it; its CONTENT_TYPE_LATEST
#: is `version=1.0.0` since 0.26, the UTF-8 names format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds: runs from 50 ms to an hour; start delays from 10 ms to 30 min.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)
#: The default sensitive names' forms (a limit key's placeholder naming one is masked).
_DEFAULTS = fields_forms(DEFAULT_SENSITIVE_FIELDS)


@dataclass
class Snapshot:
    """The database gauges of one scrape."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    oldest_due_age: dict[str, float] = field(default_factory=dict)
    workers: dict[str, int] | None = None
    paused: set[str] | None = None
    limits: list[dict[str, Any]] | None = None
    """Cluster-wide limits (`status.limit_usage`)."""
    timed_out: bool = False
    error: bool = False
    duration: float = 0.0


#: The database gauges `render()` read, for the collector it renders them with (set in the
#: context its thread runs in: concurrent renders each render their own).
_RENDERED: contextvars.ContextVar[Snapshot | None] = contextvars.ContextVar(
    "job_processor_rendered", default=None
)


class DatabaseCollector(Collector):
    """Gauges read from MongoDB once per scrape (a few aggregates on covered index scans),
    within `budget` seconds."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        budget: float,
        worker_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.budget = budget
        self.worker_timeout = worker_timeout
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.snapshot = Snapshot()
        self.sensitive: Callable[[str], bool] = lambda name: name_is_sensitive(name, _DEFAULTS)
        """Field names whose values a per-value limit's key shows masked (`key` label): the
        default names; a dashboard's own list on its /metrics."""
        self.undetected: tuple[Any, str] | None = None
        """(db, collection prefix) while the server's kind is still to be asked: by the first
        scrape that gets an answer, within its budget (`for_database`)."""

    async def refresh(self) -> Snapshot:
        snap = Snapshot()
        started = self.loop.time()
        try:
            async with asyncio.timeout(self.budget):
                await self._read(snap)
        except TimeoutError:
            snap.timed_out = True
            # not even the first read came back: MongoDB could not be read (the driver waits
            # for a server longer than the budget, so an outage never raised here)
            snap.error = snap.workers is None
        except PyMongoError:
            snap.error = True
        snap.duration = self.loop.time() - started
        self.snapshot = snap
        return snap

    async def _read(self, snap: Snapshot) -> None:
        if self.undetected is not None:  # asked again at the next scrape if unanswered
            self.storage = await Storage.open(*self.undetected)
            self.undetected = None
        now = self.clock.now()
        docs = await self.storage.workers.heartbeats()
        live = [w for w in docs if worker_alive(w, now, self.worker_timeout)]
        crashed = sum(1 for w in live if w.get("crashed"))  # its heartbeat on, claiming nothing
        snap.workers = {
            "alive": len(live) - crashed,
            "crashed": crashed,
            "dead": len(docs) - len(live),
        }
        snap.paused = await self.storage.paused.names()
        defined = await self.storage.definitions.limit_keys()
        usage = top_usage(await self.storage.limits.all(), now, defined)
        snap.limits = _merged(mask_limit_keys(usage, self.sensitive, MASK))  # no IBAN shown
        for status in (S.WAITING, S.PENDING, S.PAUSED, S.RUNNING, *sorted(TERMINAL)):
            for name, n in (await self.storage.jobs.counts_by_name(status)).items():
                snap.jobs[(name, status.value)] = n
        now_ms = D.epoch_ms(now)
        # every name with due jobs: a job another program inserted has no status until its
        # first claim (docs/scale.md), so no count above names it
        for name, (n, oldest) in (await self.storage.job_admin.due_by_name(None, now)).items():
            snap.due[name] = n
            snap.oldest_due_age[name] = max(0.0, (now_ms - oldest) / 1000)

    def collect(self) -> Iterator[Metric]:
        if (rendered := _RENDERED.get()) is not None:  # render() read it, on the loop
            yield from self._families(rendered)
            return
        if threading.get_ident() != self._loop_thread:
            # a scrape from the HTTP server's thread: compute on the processor's loop; when it
            # cannot (the loop is blocked past the budget, or no longer runs), the last values
            # are served marked as such (`job_processor_scrape_timeout` 1), never as fresh;
            # a fresh read is served as read (a concurrent scrape's may land meanwhile)
            read: Snapshot | None = None
            if self.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.refresh(), self.loop)
                try:
                    read = future.result(timeout=self.budget + 1)
                except Exception:
                    future.cancel()
            if read is None:
                read = dataclasses.replace(self.snapshot, timed_out=True)
            yield from self._families(read)
            return
        # on the loop's own thread (a `generate_latest` of the user's own): the last values
        yield from self._families(self.snapshot)

    @staticmethod
    def _families(snap: Snapshot) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "job_processor_jobs",
            "Jobs in the database by name and status",
            labels=["name", "status"],
        )
        for (name, status), n in sorted(snap.jobs.items()):
            jobs.add_metric([name, status], n)
        yield jobs
        due = GaugeMetricFamily(
            "job_processor_jobs_due", "Pending or paused jobs due now, by name", labels=["name"]
        )
        oldest = GaugeMetricFamily(
            "job_processor_oldest_due_age_seconds",
            "How long the longest-waiting due job of each name has been due",
            labels=["name"],
        )
        for name in sorted(snap.due):
            due.add_metric([name], snap.due[name])
            oldest.add_metric([name], snap.oldest_due_age[name])
        yield due
        yield oldest
        if snap.workers is not None:
            workers = GaugeMetricFamily(
                "job_processor_workers", "Worker documents by liveness", labels=["state"]
            )
            for state, n in sorted(snap.workers.items()):
                workers.add_metric([state], n)
            yield workers
        if snap.paused is not None:
            paused = GaugeMetricFamily(
                "job_processor_name_paused", "1 for each paused job name", labels=["name"]
            )
            for name in sorted(snap.paused):
                paused.add_metric([name], 1)
            yield paused
        if snap.limits is not None:
            yield from _limit_families(snap.limits)
        yield GaugeMetricFamily(
            "job_processor_scrape_timeout",
            "1 when the database gauges ran out of their time budget (partial values)",
            value=1 if snap.timed_out else 0,
        )
        yield GaugeMetricFamily(
            "job_processor_scrape_error",
            "1 when the database gauges could not be read (MongoDB error)",
            value=1 if snap.error else 0,
        )
        yield GaugeMetricFamily(
            "job_processor_scrape_duration_seconds",
            "Time spent reading the database gauges",
            value=snap.duration,
        )


def _merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per series (key and template) shown: keys of one template masked alike
    (`acct:••••••` of two IBANs) add up as a folded row does (`core.limits.added`; a
    duplicate series is invalid exposition)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        series = (str(row["key"]), str(row.get("template") or ""))
        out[series] = dict(row) if series not in out else added(out[series], row)
    return list(out.values())


def _limit_families(limits: list[dict[str, Any]]) -> Iterator[Metric]:
    """The job_processor_limit_* families: labels `key`, and `template`, the per-value
    limit's key it was filled from ("" for a static limit), so that a sum by template stays
    one series while its busiest keys come and go."""
    labels = ["key", "template"]
    running = GaugeMetricFamily(
        "job_processor_limit_running",
        "Slots of each cluster-wide limit held by running jobs (every worker)",
        labels=labels,
    )
    capacity = GaugeMetricFamily(
        "job_processor_limit_capacity",
        "The concurrency of each cluster-wide limit that has one",
        labels=labels,
    )
    started = GaugeMetricFamily(
        "job_processor_limit_started_in_window",
        "Starts within the rate window of each cluster-wide limit that has a rate",
        labels=labels,
    )
    rate = GaugeMetricFamily(
        "job_processor_limit_rate",
        "Starts allowed per window (its length is the limit's per_seconds)",
        labels=labels,
    )
    keys = GaugeMetricFamily(
        "job_processor_limit_keys",
        "How many keys of a per-value limit a folded row ('... (other keys)') adds up",
        labels=labels,
    )
    for usage in sorted(limits, key=lambda u: (str(u["key"]), str(u.get("template") or ""))):
        series = [str(usage["key"]), str(usage.get("template") or "")]
        running.add_metric(series, usage["running"])
        if usage.get("keys"):
            keys.add_metric(series, usage["keys"])
        if usage.get("concurrency") is not None:
            capacity.add_metric(series, usage["concurrency"])
        if usage.get("rate") is not None and usage.get("per_seconds"):
            started.add_metric(series, usage["started_in_window"])
            rate.add_metric(series, usage["rate"])
    yield running
    yield capacity
    yield started
    yield rate
    yield keys


class WithoutCreated(Collector):
    """The families of `registry` without their `_created` samples: prometheus_client adds
    one (the time each labelled child was made) to every counter and histogram, served as a
    `<name>_created` gauge family in the text format, one series per name and label set
    beside each counter's (not in the documented series, docs/operations.md). OpenMetrics
    makes them optional; Prometheus' increase() and rate() do not read them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inner = registry

    def describe(self) -> list[Metric]:
        return list(self.inner.collect())

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            kept = [s for s in family.samples if not s.name.endswith("_created")]
            if len(kept) != len(family.samples):
                family = copy.copy(family)
                family.samples = kept
            yield family


class Metrics:
    """Prometheus series of one process in their own registry (`self.registry`). It is a
    telemetry observer: attach it with `enable(processor)`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # the counters and histograms live in a registry of their own, served through
        # `WithoutCreated` (no `<name>_created` series: see there)
        r = CollectorRegistry()
        self.registry.register(WithoutCreated(r))
        self.ended = Counter(
            "job_processor_jobs_ended",
            "Runs this process ended, by name and final status (finished, errored, killed)",
            ["name", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "job_processor_job_run_duration_seconds",
            "Handler run time of each run, by name",
            ["name"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.start_delay = Histogram(
            "job_processor_job_start_delay_seconds",
            "Time from a run being due (scheduled_for) to its start, by name",
            ["name"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "job_processor_job_retries",
            "Failed attempts scheduled for a retry, by name",
            ["name"],
            registry=r,
        )
        self.recoveries = Counter(
            "job_processor_job_recoveries",
            "Runs of crashed or lost workers recovered by this process, by name and new status",
            ["name", "status"],
            registry=r,
        )
        self.cron_slots = Counter(
            "job_processor_cron_slots",
            "Cron slots handled by this process: run (task created), missed, skipped",
            ["name", "outcome"],
            registry=r,
        )
        self.database: DatabaseCollector | None = None

    def start_at_zero(self, names: list[str], crons: list[str]) -> None:
        """Export each counter of these names at 0 before its first event: Prometheus'
        `increase()` sees no rise in a series that first appears at 1, so the documented
        missed-slot alert never fired on a cron's first missed slot."""
        for name in names:
            self.retries.labels(name)
            for status in ENDED_STATUSES:
                self.ended.labels(name, status)
            for status in RECOVERED_TO:
                self.recoveries.labels(name, status)
        for name in crons:
            for outcome in CRON_OUTCOMES:
                self.cron_slots.labels(name, outcome)

    # ---- telemetry observer -------------------------------------------------------------

    def run_ended(self, claimed: Doc, final: Doc, duration_ms: int | None) -> None:
        name = str(final["name"])
        status = str(final["status"])
        if status in ENDED_STATUSES:
            self.ended.labels(name, status).inc()
        elif status == S.PENDING.value and int(final.get("failures") or 0) > int(
            claimed.get("failures") or 0
        ):
            self.retries.labels(name).inc()
        if duration_ms is not None:
            self.duration.labels(name).observe(duration_ms / 1000)
        due, started = claimed.get("scheduled_for"), claimed.get("run_started_at")
        if isinstance(due, dt.datetime) and isinstance(started, dt.datetime):
            delay = (as_utc(started) - as_utc(due)).total_seconds()
            self.start_delay.labels(name).observe(max(0.0, delay))

    def recovered(self, doc: Doc, final: Doc) -> None:
        name, status = str(final["name"]), str(final["status"])
        self.recoveries.labels(name, status).inc()
        if status in ENDED_STATUSES:  # a slot recovered as missed is a slot, not a run ended
            self.ended.labels(name, status).inc()

    def cron_slot(self, name: str, outcome: CronOutcome) -> None:
        self.cron_slots.labels(name, outcome).inc()

    # ---- database gauges ------------------------------------------------------------------

    def watch_database(
        self,
        storage: Storage,
        *,
        clock: Clock | None = None,
        budget: float = 2.0,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> DatabaseCollector:
        """Add the database gauges (call from the event loop that owns the database client)."""
        if self.database is not None:
            raise RuntimeError("this Metrics already watches a database")
        self.database = DatabaseCollector(
            storage, clock or SystemClock(), budget, worker_timeout, asyncio.get_running_loop()
        )
        self.registry.register(self.database)
        return self.database

    async def refresh(self) -> None:
        if self.database is not None:
            await self.database.refresh()


#: The labels each counter is exported with at 0 before its first event.
ENDED_STATUSES = ("finished", "errored", "killed")
CRON_OUTCOMES = ("run", "missed", "skipped")
#: What a recovery writes of a crashed run (a retry, a resumable job paused, errored for good,
#: a kill requested meanwhile): exported at 0 per name (a missed cron slot's is `skipped`).
RECOVERED_TO = ("pending", "paused", "errored", "killed")


def enable(
    processor: Any, *, registry: CollectorRegistry | None = None, budget: float = 2.0
) -> Metrics:
    """Metrics for a JobProcessor: its counters and histograms, and the database gauges.
    Call from its event loop (after init_job_processor)."""
    m = Metrics(registry)
    processor.telemetry.add(m)
    m.start_at_zero(list(processor.definitions), list(processor.crons))
    m.watch_database(
        processor.storage,
        clock=processor.clock,
        budget=budget,
        worker_timeout=processor.settings.worker_timeout,
    )
    return m


async def for_database(
    db: Any,
    collection_prefix: str = "job_processor_",
    *,
    registry: CollectorRegistry | None = None,
    budget: float = 2.0,
    clock: Clock | None = None,
) -> Metrics:
    """Database gauges only, for a process that runs no jobs (a dashboard). The server's kind
    is asked by the first scrape, within its budget (in an outage the driver would wait its
    server selection, 30 s by default, before that scrape's budget began), and again by the
    next one while unanswered."""
    m = Metrics(registry)
    collector = m.watch_database(Storage(db, collection_prefix), clock=clock, budget=budget)
    collector.undetected = (db, collection_prefix)
    return m


async def render(metrics: Metrics) -> bytes:
    """The exposition text (`CONTENT_TYPE`), database gauges read now within their budget.
    The text is made in a thread (`asyncio.to_thread`): with thousands of names it is megabytes,
    seconds of CPU the event loop (a dashboard's, an app's) would otherwise spend blocked."""
    snap = await metrics.database.refresh() if metrics.database is not None else None
    token = _RENDERED.set(snap)  # copied into the thread's context
    try:
        return bytes(await asyncio.to_thread(generate_latest, metrics.registry))
    finally:
        _RENDERED.reset(token)


class MetricsServer:
    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve `/metrics` over HTTP from a background thread (prometheus_client's server); each
    scrape reads the database gauges on the processor's event loop. `close()` stops it."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)
