"""One process's runtime: the worker and its loops, wired together, started and stopped.

`Runtime` owns the worker (claim loop, executions, final writes), the hooks, the recovery sweep,
the heartbeat, the ownership watcher (kill delivery, reconciliation), the cron scheduler, the
change-stream waker, the registry and the retention pass. `start()` runs them in two task groups
(the worker's loops, and the side loops that also serve `run_job`); `stop()` stops them
gracefully. The public `JobProcessor` is a Runtime with the scheduling API on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core import retention as R
from ..core.clock import Clock
from ..core.definitions import CronDef, JobDef
from ..core.log import EventLog
from ..core.settings import Settings
from ..core.status import JobStatus
from ..core.telemetry import Telemetry
from ..storage import Storage
from ..storage.connect import unreachable_at_start
from ..storage.transient import is_transient
from . import sentry
from .crons import CronScheduler
from .flows import Flows
from .heartbeat import Heartbeat
from .hooks import HookRunner
from .ownership import OwnershipWatcher
from .recovery import Recovery
from .signals import stop_on_signals, unless_set
from .upkeep import Registry, Trimmer
from .wakeup import ChangeStreamWaker
from .worker import Worker

Doc = dict[str, Any]


class Runtime:
    """The engine of one processor (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        definitions: Mapping[str, JobDef],
        crons: Mapping[str, CronDef],
        worker_tags: list[str] | None,
        clock: Clock,
        log: EventLog,
        settings: Settings,
        instance_id: str | None,
    ) -> None:
        self.storage = storage
        self.definitions: dict[str, JobDef] = dict(definitions)
        """Every job this process can run: its jobs, its crons, its event deliveries."""
        self.worker_tags = worker_tags
        self.clock = clock
        self.log = log
        self.settings = settings
        self.instance_id = instance_id
        self.hooks = HookRunner(
            storage,
            self.definitions,
            clock,
            log,
            settings.worker_timeout,
            lambda: self.worker_id,
            settings.retention,
        )
        self.worker = Worker(
            storage, self.definitions, worker_tags, clock, log, settings, self.hooks
        )
        self.recovery = Recovery(storage, self.worker, self.definitions, self.hooks, clock, log)
        self.flows = Flows(
            storage,
            clock,
            log,
            self.worker.wake.set,
            settings.worker_timeout,
            lambda name: R.of(self.definitions.get(name), settings.retention),
        )
        self.flows.pre_read = lambda: self.recovery.flow_docs  # read by the sweep's one query
        self.worker.on_ended = self.flows.ended
        self.recovery.sweeps.append(self.flows.sweep)  # dependencies that ended unnoticed
        self.registry = Registry(storage, self.definitions, log, settings.worker_timeout)
        self.heartbeat = Heartbeat(
            storage, self.worker, self.recovery, clock, log, worker_tags, instance_id, self.registry
        )
        self.ownership = OwnershipWatcher(self.worker, storage, self.recovery, clock, log)
        self.scheduler = CronScheduler(
            storage, crons, clock, log, self._on_cron_task, retention=settings.retention
        )
        self.worker.cron_followed = self.scheduler.followed
        self.trimmer = Trimmer(storage, self.definitions, settings.retention, log)
        storage.jobs.retention_of = lambda name: R.of(
            self.definitions.get(name), settings.retention
        )
        self.heartbeat.trimmer = self.trimmer
        self.waker = ChangeStreamWaker(
            storage.jobs,
            self.worker,
            clock,
            log,
            settings.change_stream_max_await,
            settings.poll_interval,
            storage.jobs.profile.stream_waits,
        )
        self.worker.stream_blocking = lambda: self.waker.active and self.waker.blocking is True
        self.telemetry = Telemetry()
        """Metrics observers (job_processor.metrics.enable attaches Prometheus's)."""
        self.worker.telemetry = self.scheduler.telemetry = self.telemetry
        self.client_id = D.new_client_id()
        """Who this process is while it has no worker document (a web app that only schedules)."""
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        """Called at the end of `stop()`, in order (the event bus closes its HTTP client)."""
        self._users = 0
        self._runtime_lock = asyncio.Lock()
        self._side_loops: asyncio.Task[None] | None = None
        self._sweeps_stop = asyncio.Event()
        """Set when the runtime is released: the sweep loop ends."""
        self._sweep_loop: asyncio.Task[None] | None = None
        self.stop_forced = False
        """Set when a second signal ended `serve()`'s graceful stop before it was done."""
        self._teardown: asyncio.Task[None] | None = None
        """The end of the runtime (`_end_runtime`), once the last user released it."""
        self._in_stop = False
        """Set while stop() runs, up to its own release of the runtime (`_sweeps_paused`)."""
        self._worker_loops: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        """Set when a background loop died: `serve()` then exits with an error."""
        self._starting: asyncio.Task[None] | None = None
        self._start_waiters = 0
        self._calls = 0  # start() and stop() calls, numbered: the last one called wins
        self._last_stop = 0
        self._start_abandoned = False  # _stop_wanted set by a caller giving up, not by stop()
        self._stopping: asyncio.Task[None] | None = None
        self._stop_wanted = False
        self._stop_called = asyncio.Event()
        """Set by stop(), cleared by start(): a serve() waiting for a signal stops waiting."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop this processor was first started in: its claim loop's events are
        bound to it (`bind_loop`)."""
        self._runtime_loop: asyncio.AbstractEventLoop | None = None
        """The event loop the side loops (heartbeat, ownership, sweeps) last ran in."""

    @property
    def identity(self) -> str:
        """The worker id while it has one (started, or inside run_job), else the client id."""
        return self.worker_id or self.client_id

    def wake_for(self, docs: list[Doc]) -> None:
        """Wake the claim loop if one of these new documents is a pending job it claims: at
        once, or at its due time for a job scheduled for later (as `schedule_job` does)."""
        if not self.started:
            return
        mine = [
            d
            for d in docs
            if d.get("status") == JobStatus.PENDING.value and d.get("name") in self.worker.names
        ]
        for name in {str(d["name"]) for d in mine}:
            self.worker.expect(name)
        for when in {d.get("scheduled_for") for d in mine}:
            if isinstance(when, dt.datetime):
                self.worker.wake_at(when)
            else:
                self.worker.wake.set()

    def _on_cron_task(self, task: Doc) -> None:
        if task["status"] == JobStatus.PENDING and task["name"] in self.worker.names:
            self.worker.wake.set()

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    @property
    def started(self) -> bool:
        return self._worker_loops is not None

    # ---- lifecycle ------------------------------------------------------------------------

    def bind_loop(self) -> None:
        """Ties this processor to the running event loop once a start has succeeded (its
        worker loops running: `_start`); `check_loop` then refuses a start in another loop (a
        second `asyncio.run()` with the same processor): the claim loop, the heartbeat and the
        wake-ups wait on events bound to the first one, and the claim loop would crash at its
        first wait (`processor_loop_crashed`), nothing claimed. A start that failed (MongoDB
        unreachable) ties nothing: it can be tried again in another loop. `run_job` and
        `run_until_idle` are not tied: they ran in one loop per test before, and still do."""
        self.check_loop()
        self._loop = asyncio.get_running_loop()

    def check_loop(self) -> None:
        """RuntimeError, naming the fix, in an event loop other than the one a start of this
        processor succeeded in (`bind_loop`)."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError(
                "this JobProcessor already ran in another event loop (asyncio.run() called "
                "again with the same processor?): its claim loop, heartbeat and wake-ups "
                "belong to that loop. Make a processor in each event loop: call "
                "init_job_processor(...) (or in_memory_processor(...)) inside the "
                "asyncio.run() that starts it (on the in-memory backend, give it the same "
                "AsyncMongoMockClient's database to keep the jobs)"
            )

    async def _acquire_runtime(self) -> None:
        """Worker document + heartbeat + kill delivery, held while started or running run_job."""
        async with self._runtime_lock:
            if self._teardown is not None:  # a release its caller stopped waiting for
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._teardown)
                self._teardown = None
            self._users += 1
            if self._users > 1:
                return
            loop = asyncio.get_running_loop()
            if self._runtime_loop is not loop:
                # a run_job, or a start that failed, in another event loop left these bound to
                # it (an asyncio.Event is, once waited on): each wait here would fail at once,
                # the side loops spinning. Nothing waits on them now: new ones
                self.heartbeat.stop_event = asyncio.Event()
                self.ownership.stop_event = asyncio.Event()
                self._sweeps_stop = asyncio.Event()
                self._runtime_loop = loop
            self.heartbeat.stop_event.clear()
            self.ownership.stop_event.clear()
            self._sweeps_stop.clear()
            try:
                await self.heartbeat.register()
            except BaseException:
                self._users -= 1
                raise
            self._side_loops = sentry.detached(
                lambda: asyncio.create_task(self._run_side_loops(), name="side-loops")
            )

    async def _run_side_loops(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(cancellable(self.heartbeat.loop()), name="heartbeat")
                tg.create_task(cancellable(self.heartbeat.lease_watch()), name="lease")
                tg.create_task(cancellable(self.ownership.loop()), name="ownership")
                self._sweep_loop = tg.create_task(
                    cancellable(
                        self.recovery.loop(
                            self._sweeps_stop,
                            self.heartbeat.after_sweep,
                            lambda: self._sweeps_paused,
                        )
                    ),
                    name="sweep",
                )
        except Exception:
            self.failed.set()  # first: serve() stops on it whatever logging does
            self.log.exception("processor_loop_crashed", worker_id=self.worker_id)
            raise

    @property
    def _sweeps_paused(self) -> bool:
        """While a stop is under way and no run_job holds the runtime, this process sweeps no
        more (other workers do): no hook recovered meanwhile prolongs the stop. A run_job
        called during the stop sweeps as usual while it runs."""
        return self._in_stop and self._users == 1

    async def _release_runtime(self) -> None:
        async with self._runtime_lock:
            if self._users <= 0:  # released already: never twice
                return
            self._users -= 1
            if self._users > 0:
                return
            # shielded: a run_job whose caller stops waiting during the teardown never leaves
            # the heartbeat beating for a processor that holds no runtime (the next acquire
            # waits for it)
            self._teardown = sentry.detached(
                lambda: asyncio.create_task(self._end_runtime(), name="runtime-teardown")
            )
            await asyncio.shield(self._teardown)

    async def _end_runtime(self) -> None:
        # first the sweep (the one under way ends, and starts no hook after it), then the
        # hooks it started in the background, while this process is still a live worker: with
        # its heartbeat stopped or its document gone, another worker would declare it dead and
        # call them a second time
        self._sweeps_stop.set()
        if self._sweep_loop is not None:
            # bounded like the other steps: a read under way in an outage ends with the lease,
            # not with the driver's serverSelectionTimeoutMS (each recovery is a
            # compare-and-set: one cut short is the next sweep's, here or elsewhere)
            await _within(self._sweep_loop, max(self.heartbeat.lease_left(), 1.0))
            self._sweep_loop = None
        await self.hooks.drain()
        self.heartbeat.stop_event.set()
        self.ownership.stop_event.set()
        # bounded by what is left of the lease (at least a second): past it, with MongoDB
        # unreachable, other workers declare this one dead and remove its document anyway
        if self._side_loops is not None:
            await _within(self._side_loops, max(self.heartbeat.lease_left(), 1.0))
            self._side_loops = None
        with contextlib.suppress(PyMongoError, TimeoutError):
            async with asyncio.timeout(max(self.heartbeat.lease_left(), 1.0)):
                await self.heartbeat.unregister()

    async def start(self) -> None:
        """Start claiming and running jobs in the background; returns at once. If it fails
        (MongoDB unreachable: DatabaseUnreachableError naming the server, the driver's error as
        its cause), nothing is left behind and it can be called again. RuntimeError in an event
        loop other than the one a start of it succeeded in (`bind_loop`)."""
        self.check_loop()
        self._calls += 1
        call = self._calls
        self._stop_called.clear()
        if self._stopping is not None:  # a stop under way ends first; then this starts again
            try:
                await asyncio.shield(self._stopping)
            except asyncio.CancelledError:  # the stop was forced (serve()), or this call cut
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:  # the stop's own error is its callers'
                pass
            if self._last_stop > call:  # unless a stop() was called after this start()
                return
        if self.started:
            return
        if self._starting is None:
            self._stop_wanted = self._start_abandoned = False
            # the loops in Sentry scopes of their own, not the caller's (a request's span)
            self._starting = sentry.detached(
                lambda: asyncio.create_task(self._start(), name="start")
            )
            self._starting.add_done_callback(lambda _: setattr(self, "_starting", None))
        elif self._start_abandoned:  # a new caller wants the start its last caller gave up on
            self._stop_wanted = self._start_abandoned = False
        starting = self._starting
        self._start_waiters += 1
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if starting.cancelled() and not (task is not None and task.cancelling()):
                return  # cut short by serve()'s signal (`_cut_start`): nothing started
            # the last caller gave up (a timeout, a cancelled serve()): it was told the start
            # failed, so the start under way leaves nothing started behind its back
            if not starting.done() and self._start_waiters == 1:
                self._stop_wanted = self._start_abandoned = True
            raise
        except Exception as exc:  # MongoDB gone since init: said as init says it
            if is_transient(exc):
                raise unreachable_at_start(self.storage.db, exc) from exc
            raise
        finally:
            self._start_waiters -= 1

    def _cut_start(self) -> None:
        """A start under way that runs no worker loop yet ends now (serve() got a signal): the
        command it waits for (MongoDB unreachable: the driver's `serverSelectionTimeoutMS`,
        30 s, each) is cancelled and `_start` releases what it acquired, as when it fails. Its
        callers' start() return, nothing started, as after a stop() called meanwhile."""
        if self._starting is not None and not self.started:
            self._stop_wanted, self._start_abandoned = True, False  # if it ends anyway
            self._starting.cancel()

    async def _start(self) -> None:
        self.failed.clear()  # started again after a crash: a new run of the loops
        self.heartbeat.crashed = None
        self.worker.stopping.clear()
        self.scheduler.stop_event.clear()
        self.waker.stop_event.clear()
        await self._acquire_runtime()
        try:
            # recover what dead workers left behind before taking new work (the same read of
            # the workers tells which of them define one of these names differently)
            await self.recovery.sweep(self.clock.now(), definitions=True)
            self.registry.started(self.worker_id, self.recovery.live)
        except BaseException:
            await self._release_runtime()
            raise
        if self._stop_wanted:  # stop() was called meanwhile: nothing starts
            await self._release_runtime()
            return
        self.bind_loop()  # started: tied to this loop from now on
        self._worker_loops = asyncio.create_task(self._run_worker_loops(), name="worker-loops")

    async def _run_worker_loops(self) -> None:
        """The claim loop and the cron scheduler: if one dies, both stop, loudly."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.worker.claim_loop(), name="claim-loop")
                tg.create_task(self.scheduler.loop(), name="cron-scheduler")
                if self.settings.change_streams and self.worker.names:
                    tg.create_task(self.waker.loop(), name="change-stream")
        except Exception as exc:
            self.failed.set()  # first: serve() stops on it whatever logging does
            self.heartbeat.crashed = crash_text(exc)  # health and status say it
            self.log.exception("processor_loop_crashed", worker_id=self.worker_id)
            raise

    async def stop(self) -> None:
        """Graceful: no new claims; running handlers get the abort signal (reason "shutdown") and
        `shutdown_grace` seconds, then are cancelled. Resumable jobs become paused (however their
        handler returned), others finished if their handler returned, else pending again.
        Returns when every final status is written and every owed hook has run (or timed out)."""
        self._calls += 1
        self._last_stop = self._calls  # the last of start() and stop() called has its way
        self._stop_called.set()  # a serve() under way returns once this stop is over
        if self._stopping is None:
            if self._starting is None and not self.started:
                return
            # registered at once, even while it waits for a start under way: a start() called
            # after this stop() waits for it, then starts again (the last word)
            self._stopping = sentry.detached(
                lambda: asyncio.create_task(self._stop_after_start(), name="stop")
            )
            self._stopping.add_done_callback(lambda _: setattr(self, "_stopping", None))
        await asyncio.shield(self._stopping)

    async def _stop_after_start(self) -> None:
        if self._starting is not None:  # a start under way: nothing more starts, then stop
            self._stop_wanted, self._start_abandoned = True, False
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._starting)
        if self.started:
            await self._stop()

    async def _stop(self) -> None:
        self.log.info("worker_stopping", worker_id=self.worker_id)
        self._in_stop = True  # no more sweeps unless a run_job holds on (`_sweeps_paused`)
        try:
            self.worker.request_stop()
            self.scheduler.stop_event.set()
            self.waker.stop_event.set()
            assert self._worker_loops is not None
            # a stop() cancelled by its caller never cuts a claim in flight (asyncio.wait does
            # not cancel it); one still in flight when the lease ends (MongoDB unreachable) is
            # cut, and its job, if the claim landed, recovered by the others
            await _within(self._worker_loops, max(self.heartbeat.lease_left(), 1.0))
            # claims whose reply came after the stop began, not put back yet (an outage)
            await self.worker.claims.release_at_stop(
                max(self.heartbeat.lease_left(), 1.0), self.worker._fields
            )
            await self.worker.drain()
            await self.hooks.drain()  # recovered hooks running in the background
            self._worker_loops = None
        finally:
            self._in_stop = False
        await self._release_runtime()
        for closing in self.on_stop:  # e.g. the webhooks' HTTP client
            await closing()

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """start(), block until SIGTERM/SIGINT (or a crashed loop, `stop` set, or a stop() called
        elsewhere), then stop().
        A signal while start() still waits (MongoDB unreachable) cuts that start short, nothing
        started (`_start_unless`). A second signal, during that stop or already during start(),
        ends the stop at once (`worker_stop_forced`; `stop_forced` set): runs not written yet
        are left to the other workers' recovery."""
        stop = stop or asyncio.Event()
        force = asyncio.Event()  # a signal once `stop` is set, even during start()
        # its caller giving up (a TaskGroup, wait_for), at any point: what it started stops,
        # gracefully, signals forcing that stop as any; the cancellation goes on after it
        cancelled: asyncio.CancelledError | None = None
        with stop_on_signals(stop, then=force):
            try:
                if not stop.is_set():  # a signal before the start: nothing was started
                    await self._start_unless(stop, force)
                waiters = [
                    asyncio.create_task(stop.wait()),
                    asyncio.create_task(self.failed.wait()),
                    # a stop() called elsewhere (a handler; the last call has its way)
                    asyncio.create_task(self._stop_called.wait()),
                ]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            except asyncio.CancelledError as exc:
                cancelled = exc
            stop.set()  # a crashed loop stops it too: any signal from now on forces the stop
            stopping = asyncio.create_task(self.stop(), name="graceful-stop")
            while True:
                try:
                    if stopping.cancelling():  # forced, the cancellation landing as it ended
                        await asyncio.wait({stopping})
                        if not stopping.cancelled():
                            stopping.exception()
                        ended = False
                    else:
                        ended = await unless_set(stopping, force)
                    break
                except asyncio.CancelledError as exc:  # cancelled during the stop: it ends first
                    cancelled = exc
            if ended and force.is_set() and (stopping.cancelled() or not stopping.exception()):
                # a second signal that came as the stop ended (one with the first, while a
                # start was cut short: no stop to speak of) counts: forced, as documented
                ended = False
            if ended:
                if cancelled is None:
                    await stopping  # its exception, if any
                elif not stopping.cancelled():
                    stopping.exception()  # retrieved: the cancellation is what is raised
            else:
                if self._stopping is not None:  # the stop every caller shares ends too
                    self._stopping.cancel()
                self.stop_forced = True
                self.log.warning("worker_stop_forced", worker_id=self.worker_id)
        if cancelled is not None:
            raise cancelled
        if self.failed.is_set():
            raise RuntimeError("a job-processor loop crashed; see the processor_loop_crashed log")

    async def _start_unless(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """serve()'s start(): a signal while it runs cuts it short (`_cut_start`), a second one
        stops waiting for that start's release (the stop is then forced). Its error, without a
        signal (MongoDB unreachable), is serve()'s."""
        starting = asyncio.create_task(self.start(), name="serve-start")
        try:
            if not await _until(starting, stop):
                self._cut_start()
                if not await _until(starting, force):  # left to end in the background
                    starting.add_done_callback(_retrieved)
                    return
        except asyncio.CancelledError:  # serve()'s caller gave up: so does this start()
            starting.cancel()
            starting.add_done_callback(_retrieved)
            raise
        await starting

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- scheduling -------------------------------------------------------------------------


def crash_text(exc: BaseException) -> str:
    """What the worker document records of a crashed loop: the first error, one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


async def _until(task: asyncio.Task[Any], event: asyncio.Event) -> bool:
    """Wait for `task` to end, or `event` to be set (`task` goes on). True when it ended."""
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return task.done()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A done callback: the outcome of a task no one awaits any more is nobody's."""
    if not task.cancelled():
        task.exception()


async def _within(task: asyncio.Task[Any], seconds: float) -> None:
    """Wait for `task` up to `seconds` (a caller cancelled meanwhile does not cancel it); past
    that, cancel it and wait for its end. Its own error is not raised here (it was logged)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()


async def cancellable(loop: Coroutine[Any, Any, None]) -> None:
    """A side loop. An error raised while it is being cancelled is that cancellation, not a
    crash: PyMongo's async driver on Python 3.11 raised `RuntimeError: Lock is not acquired`
    when a server selection waiting out an outage was cancelled (a stop during an outage);
    `storage.driver_fixes` removes that cause, this stays for any driver it cannot fix."""
    try:
        await loop
    except Exception:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        raise
