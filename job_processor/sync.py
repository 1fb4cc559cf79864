"""`job_processor.sync.JobClient`: the producer API for synchronous code (Django, Flask, scripts,
code migrating from Celery), on PyMongo's `MongoClient`.

    from pymongo import MongoClient
    from job_processor.sync import JobClient

    client = JobClient(MongoClient(url, tz_aware=True).get_default_database("job_processor"))
    job = client.schedule_job("send-email", {"to": "ada@example.com"}, delay=60)
    print(client.result(job.id, timeout=30))

The methods are the async `JobProcessor`'s, with the same arguments, return types and errors:
the very same code, run without an event loop (see `storage.sync_adapter`), on the same
documents, indexes and write concern. One client per process, shared by every request thread:
it holds no state of its own besides the registry cache, and PyMongo's client is thread-safe.
Made at import time it touches nothing: its first call in a process checks MongoDB answers
and creates the indexes (with `MongoClient(url, connect=False)`, a server that forks after the
import, gunicorn --preload, opens no connection before the fork). In a thread running an asyncio
event loop, `wait_for` and `result` raise and the other calls warn: they would block the loop.

With `jobs=` (the workers' `JobDef` dict; handlers are never called here) names, payload models,
dedup keys and exclusive names are checked before anything is written, exactly as the async API
checks them. Without it, a name is looked up in the registry the workers keep (its tag,
exclusive mode, attempts), and a payload model is checked by the worker when the job runs (a
payload that fails it ends the job `errored`, saying why); a name no worker has registered yet
is written as is, with a warning naming the closest registered names.

A JobClient never calls on_job_exited (its handlers are not here): a kill records the hook for
a worker to call, and a retry waits for a worker to have called the hook still owed.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from bson import ObjectId
from pydantic import BaseModel
from pymongo.database import Database
from pymongo.errors import PyMongoError

from .core.clock import BlockingClock
from .core.definitions import JobDef, parse_jobs
from .core.errors import (
    DatabaseUnreachableError,
    InvalidDatabaseError,
    JobProcessorError,
    keywords_checked,
)
from .core.log import make_log
from .core.models import Event, Job
from .core.producing import JobSpec
from .core.settings import (
    check_keep_events,
    check_positive,
    check_prefix,
    check_retry_budget,
)
from .events.bus import EventBus
from .processor import JobProcessor, init_job_processor
from .storage import PRODUCER_RETRY_SECONDS
from .storage.connect import address
from .storage.sync_adapter import SyncDatabase, drive
from .storage.transient import describe, is_transient

__all__ = ["JobClient", "JobSpec"]


class JobClient:
    """Schedule, read, kill, retry, wait for and emit from synchronous code (see the module
    docstring)."""

    def __init__(
        self,
        database: Database[Any],
        jobs: Mapping[str, JobDef | Mapping[str, Any]] | None = None,
        *,
        prefix: str = "job_processor_",
        producer_retry_seconds: float = PRODUCER_RETRY_SECONDS,
        connect_timeout: float = 10.0,
        logger: Any | None = None,
        keep_events: dt.timedelta | bool = dt.timedelta(days=30),
    ) -> None:
        if not isinstance(database, Database):
            raise InvalidDatabaseError(
                "JobClient takes a database of PyMongo's synchronous MongoClient: "
                "MongoClient(url, tz_aware=True).get_default_database('job_processor') (the "
                f"async API takes AsyncMongoClient's); got {type(database).__name__}"
            )
        # the options are checked now (as init_job_processor will: a logger that is none, a
        # job named like the webhook deliveries), MongoDB is reached on the first call
        EventBus.check_names(list(parse_jobs(jobs)), EventBus.delivery_names({}, True))
        make_log(logger)
        check_keep_events(keep_events)
        retry_seconds = check_retry_budget(producer_retry_seconds)
        check_prefix(prefix)
        check_positive("connect_timeout", connect_timeout)
        self._database = database
        self._retry_seconds = retry_seconds
        self._init = functools.partial(
            init_job_processor,
            SyncDatabase(database),
            logger if logger is not None else logging.getLogger("job_processor.sync"),
            jobs=jobs,
            collection_prefix=prefix,
            clock=BlockingClock(),
            connect_timeout=connect_timeout,
            producer_retry_seconds=producer_retry_seconds,
            keep_events=keep_events,  # an event's expiry is written by its emit
            change_streams=False,  # wait_for polls: a blocking getMore would hold a thread
        )
        self._open_names = jobs is None
        self._made: JobProcessor | None = None
        self._making: tuple[int, Future[JobProcessor]] | None = None  # (pid, attempt under way)
        self._lock = threading.Lock()  # held for assignments only, never across I/O

    def _processor(self, verb: str, *, waits: bool = False) -> JobProcessor:
        """The processor, made by the first call in this process (it checks MongoDB answers and
        creates the indexes): a JobClient made at import time, before a server forks its
        workers (gunicorn --preload), touches no connection in the parent. Threads calling
        meanwhile share that attempt, its processor or its error (DatabaseUnreachableError
        after connect_timeout, for all of them at once, each raising a copy of its own); the
        next call tries again. What interrupts the thread making it (KeyboardInterrupt, a
        greenlet's gevent.Timeout) is that thread's alone: the others try again."""
        _refuse_event_loop(verb, waits)
        while True:
            made = self._made
            if made is not None:
                return made
            with self._lock:
                if self._made is not None:
                    return self._made
                making = self._making
                # a parent's attempt (forked: not here), or one that ended: a new one
                mine = making is None or making[0] != os.getpid() or making[1].done()
                if mine:
                    making = self._making = (os.getpid(), Future())
            assert making is not None
            if mine:
                return self._attempt(making)
            failure = making[1].exception()  # waits; what interrupts this thread is raised
            if failure is None:
                return making[1].result()
            if isinstance(failure, Exception):
                raise _own_copy(failure) from failure.__cause__
            # the thread making it was interrupted (KeyboardInterrupt, a greenlet's
            # gevent.Timeout): that is its own; this one tries again

    def _attempt(self, making: tuple[int, Future[JobProcessor]]) -> JobProcessor:
        attempt = making[1]
        try:
            made = self._make()
            made.open_names = self._open_names
            made.hooks_here = False
            made.jobs_given_to = "the jobs= given to JobClient(database, jobs={...})"
            self._made = made
            attempt.set_result(made)
            return made
        except BaseException as exc:
            attempt.set_exception(exc)
            raise
        finally:
            with self._lock:
                if self._making is making:  # (a thread may have begun another since)
                    self._making = None

    def _make(self) -> JobProcessor:
        """The processor, made again after a transient error while producer_retry_seconds
        lasts (0: the driver's error): MongoDB answered the first ping, then went away (a
        restart, a failover) during the setup after it (indexes, registry reads), which a
        producer call rides out as it rides out its own commands."""
        began, delay = time.monotonic(), 0.1
        while True:
            try:
                return drive(self._init())
            except PyMongoError as exc:
                spent = time.monotonic() - began
                if self._retry_seconds <= 0 or not is_transient(exc):
                    raise
                if spent >= self._retry_seconds:
                    raise DatabaseUnreachableError(
                        f"MongoDB at {address(self._database)} did not answer for {spent:.1f}s "
                        f"({describe(exc)}) while the client set up its collections; the call "
                        f"did not complete (producer_retry_seconds={self._retry_seconds:g} sets "
                        "how long producer calls wait)"
                    ) from exc
            time.sleep(min(delay, self._retry_seconds - spent))  # the last try at its end
            delay = min(delay * 2, 2.0)

    def __copy__(self) -> JobClient:
        return self  # one client per process: a copy is the same client (Django's test data)

    def __deepcopy__(self, memo: dict[int, Any]) -> JobClient:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "a JobClient cannot be sent to another process (multiprocessing pickles a Pool's "
            "arguments): make one in each process, e.g. at module level from MONGODB_URL, with "
            "MongoClient(url, tz_aware=True, connect=False) when the processes are forked"
        )

    @property
    def database(self) -> Database[Any]:
        return self._database

    @keywords_checked
    def schedule_job(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
        delay: dt.timedelta | float | None = None,
        after: Iterable[Any] | None = None,
        on_dependency_failure: str = "skip",
    ) -> Job[Any]:
        """See `JobProcessor.schedule_job`."""
        return drive(
            self._processor("schedule_job").schedule_job(
                name,
                payload,
                scheduled_for,
                priority=priority,
                key=key,
                max_attempts=max_attempts,
                delay=delay,
                after=after,
                on_dependency_failure=on_dependency_failure,
            )
        )

    def get_jobs(self, job_ids: Iterable[str | ObjectId]) -> list[Job[Any]]:
        """See `JobProcessor.get_jobs`."""
        return drive(self._processor("get_jobs").get_jobs(job_ids))

    def schedule_jobs(self, items: Iterable[Any]) -> list[Job[Any]]:
        """See `JobProcessor.schedule_jobs`: `(name, payload)` tuples or `JobSpec`s."""
        return drive(self._processor("schedule_jobs").schedule_jobs(items))

    def get_job(self, job_id: str | ObjectId) -> Job[Any]:
        return drive(self._processor("get_job").get_job(job_id))

    @keywords_checked
    def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Job[Any]]:
        return drive(self._processor("list_jobs").list_jobs(name, status, limit))

    def kill_job(self, job_id: str | ObjectId) -> Job[Any]:
        """See `JobProcessor.kill_job` (on_job_exited is left to a worker)."""
        return drive(self._processor("kill_job").kill_job(job_id))

    def retry_job(self, job_id: str | ObjectId) -> Job[Any]:
        """See `JobProcessor.retry_job` (waits for a worker to run a hook still owed)."""
        return drive(self._processor("retry_job").retry_job(job_id))

    @keywords_checked
    def wait_for(self, job_id: str | ObjectId, timeout: float | None = None) -> Job[Any]:
        """See `JobProcessor.wait_for`: blocks this thread, polling (at most one read per
        second on average)."""
        return drive(self._processor("wait_for", waits=True).wait_for(job_id, timeout))

    @keywords_checked
    def result(self, job_id: str | ObjectId, timeout: float | None = None) -> Any:
        """See `JobProcessor.result`: the handler's return value, or JobFailedError."""
        return drive(self._processor("result", waits=True).result(job_id, timeout))

    @keywords_checked
    def emit(
        self,
        name: str,
        payload: Mapping[str, Any] | Any = None,
        *,
        key: str | None = None,
        sync_timeout: float = 30.0,
    ) -> Event:
        """See `JobProcessor.emit` (sync subscribers are waited for, polling)."""
        return drive(
            self._processor("emit").emit(name, payload, key=key, sync_timeout=sync_timeout)
        )


def _own_copy(exc: Exception) -> Exception:
    """Another thread's error, to raise in this one: one exception object raised in several
    threads gathers all their frames in its traceback (each raise adds its own), and each
    request's traceback would show, and keep alive, the frames and locals of the others."""
    try:
        copied = copy.copy(exc)
    except Exception:  # an exception class that cannot be rebuilt from its args
        return exc
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        copied.__notes__ = list(notes)
    return copied.with_traceback(None)


def _refuse_event_loop(verb: str, waits: bool) -> None:
    """A JobClient call blocks its thread: in a thread running an event loop (an `async def`
    view) it blocks every other request, and a worker running in that loop, until it returns.
    A wait there could never see the loop's own worker run the job: it raises; a shorter call
    warns."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    fix = (
        f"in an async function, use the async API (`await processor.{verb}(...)`, the "
        f"JobProcessor of init_job_processor) or run the call in a thread (`await "
        f"asyncio.to_thread(jobs.{verb}, ...)`)"
    )
    if waits:
        raise JobProcessorError(
            f"JobClient.{verb} was called in a thread running an asyncio event loop: it would "
            f"block the loop, and a worker running in it, until the job ends or the timeout; {fix}"
        )
    also = (
        ", and until its sync subscribers' deliveries end (up to sync_timeout: a worker in this "
        "loop cannot run them meanwhile)"
        if verb == "emit"
        else ", and it is refused if the exit it retries still owes its on_job_exited (a worker "
        "in this loop could not run it meanwhile)"
        if verb == "retry_job"
        else ""
    )
    warnings.warn(
        f"JobClient.{verb} blocks the asyncio event loop running in this thread until MongoDB "
        f"answers (up to producer_retry_seconds in an outage){also}; {fix}",
        RuntimeWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The stacklevel of the first frame outside this package (the user's call), whatever
    the verb's wrappers (`keywords_checked`) add between."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package + os.sep
    ):
        frame, level = frame.f_back, level + 1
    return level
