"""`job-processor run MODULE:ATTR`: serve an app's processor; `dashboard`: serve the dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import importlib
import inspect
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from ..core.clock import iso_utc
from ..core.errors import DatabaseUnreachableError, did_you_mean
from ..engine.runtime import Runtime
from ..engine.signals import stop_on_signals, unless_set
from ..storage.connect import (
    MISSING_URL,
    close_database,
    open_database,
    unreachable_at_start,
)
from ..storage.local_server import bound_socket, free_port_near
from ..storage.transient import is_transient
from .common import UNREACHABLE, UsageError


@dataclass(frozen=True)
class RunContext:
    """Given to the app's factory when it takes one argument: `async def make(ctx)`."""

    mongodb_url: str
    db: Any
    """pymongo AsyncDatabase: the URL's database, or "job_processor" (the default everywhere)
    when the URL names none."""
    instance_id: str | None
    """INSTANCE_ID, e.g. "runner-1" (docker-compose: "runner-{{.Task.Slot}}")."""
    worker_tags: list[str] | None
    """--tags or JOB_PROCESSOR_WORKER_TAGS ("main,reports"); None when unset."""


def parse_tags(value: str | None) -> list[str] | None:
    if value is None or not value.strip():
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def load_factory(target: str) -> Any:
    if ":" not in target:
        raise UsageError(f"{target!r} must be MODULE:ATTR, e.g. myapp.jobs:make_processor")
    module_name, attr = target.split(":", 1)
    if not module_name or module_name.startswith(".") or "/" in module_name or "\\" in module_name:
        raise UsageError(
            f"{target!r}: the module must be a dotted module name, e.g. myapp.jobs:make (not a "
            "file path, not relative), found from the current directory or PYTHONPATH"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = (
                f" (modules are found from the current directory, {os.getcwd()}, and "
                "PYTHONPATH: run from your project's root, or set PYTHONPATH)"
            )
        raise UsageError(f"cannot import {module_name!r}: {exc}{hint}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        hint = did_you_mean(attr, public)
        raise UsageError(f"{module_name!r} has no attribute {attr!r}{hint}") from None


async def build_processor(target: str, tags: str | None) -> Runtime:
    url = os.environ.get("MONGODB_URL")
    if not url:
        raise UsageError(MISSING_URL)
    env_tags = os.environ.get("JOB_PROCESSOR_WORKER_TAGS")
    for name, value in (("--tags", tags), ("JOB_PROCESSOR_WORKER_TAGS", env_tags)):
        # given, but naming no tag (a compose file's `--tags "$TAGS"`, its variable unset):
        # no tags would be every tag's jobs, as init_job_processor refuses worker_tags=[]
        if value is not None and not parse_tags(value) and (name == "--tags" or value.strip()):
            raise UsageError(
                f"{name} names no tag ({value!r}): give e.g. main,reports, or leave it out "
                "to run every tag's jobs"
            )
        if name == "--tags" and value is not None:
            break
    factory = load_factory(target)
    ctx = RunContext(
        mongodb_url=url,
        db=open_database(url),
        instance_id=os.environ.get("INSTANCE_ID") or None,
        worker_tags=parse_tags(
            tags if tags is not None else os.environ.get("JOB_PROCESSOR_WORKER_TAGS")
        ),
    )
    given = "--tags" if tags is not None else "JOB_PROCESSOR_WORKER_TAGS"
    if not callable(factory) or isinstance(factory, type):
        raise UsageError(
            f"{target} is {_what(factory)}, not a function: `run` expects MODULE:ATTR "
            "naming a function (async def make(ctx) or make()) that returns the JobProcessor "
            "from init_job_processor(...)"
        )
    params = inspect.signature(factory).parameters
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > 1:
        raise UsageError(
            f"{target} takes ({', '.join(required)}): it looks like a job handler, not the app "
            "factory; `run` expects MODULE:ATTR naming a function (async def make(ctx) or "
            "make()) that returns the JobProcessor from init_job_processor(...)"
        )
    keyword_only = [
        n for n, p in params.items() if p.default is p.empty and p.kind == p.KEYWORD_ONLY
    ]
    if keyword_only:
        raise UsageError(
            f"{target} requires the keyword-only parameter(s) {', '.join(keyword_only)}, which "
            "`run` cannot give: `run` expects MODULE:ATTR naming a function (async def make(ctx) "
            "or make()) that returns the JobProcessor from init_job_processor(...)"
        )
    kinds = inspect.Parameter
    positional = (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.VAR_POSITIONAL)
    takes_ctx = any(p.kind in positional for p in params.values())
    result = factory(ctx) if takes_ctx else factory()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Runtime):  # a JobProcessor is the Runtime with its API on top
        missing = {
            "NoneType": " (a missing `return`?)",
            "coroutine": " (a missing `await` before init_job_processor(...)?)",
        }.get(type(result).__name__, "")
        if inspect.iscoroutine(result):
            result.close()  # never awaited: no "was never awaited" warning on top
        raise UsageError(
            f"{target} returned {type(result).__name__}{missing}; it must return the "
            "JobProcessor from init_job_processor(...)"
        )
    asked, built = ctx.worker_tags, result.worker_tags
    if asked is not None and (built is None or not set(asked) <= set(built)):
        # a factory that does not pass ctx.worker_tags on: the worker would claim the jobs
        # of tags it was not given (every job, with None), and not those asked for, silently
        raise UsageError(
            f"{given} says {','.join(asked)}, but {target} built a processor with "
            f"worker_tags={built!r}: pass init_job_processor(..., worker_tags=ctx.worker_tags) "
            f"in it, or leave {given} out"
        )
    return result


def _what(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    return f"a {type(value).__name__}"


#: What every LogRecord has (and what formatting adds): any other attribute came from an
#: `extra` (a LoggerAdapter's context, a line's own `extra=`), shown as structlog shows a
#: bound context.
_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: The attributes job-processor's own lines carry their structure in (`core.log.EventLog`).
_OWN_EXTRA = ("event", "fields")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_KEYS and k not in _OWN_EXTRA}


class StdlibFormatter(logging.Formatter):
    """The lines of stdlib loggers (an app's `init_job_processor(logger=logging.getLogger(...))`
    and its own) as structlog's are: a UTC timestamp and the level, or one JSON object a line
    with JOB_PROCESSOR_LOG_FORMAT=json (the event and its fields from `record.event` /
    `record.fields`, as job-processor's events carry them); a record's `extra` (a
    LoggerAdapter's) is shown too, as structlog shows a bound context."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        timestamp = iso_utc(dt.datetime.fromtimestamp(record.created, dt.UTC), "microseconds")
        event, fields = getattr(record, "event", None), getattr(record, "fields", None)
        extras = _extras(record)
        if not self.json_lines:
            line = f"{timestamp} [{record.levelname.lower():<9}] {record.name}: "
            line += record.getMessage()
            line += "".join(f" {k}={v!r}" for k, v in extras.items())
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
            return line
        if isinstance(event, str) and isinstance(fields, dict):  # one of job-processor's
            data: dict[str, Any] = {**extras, **fields, "event": event}
        else:  # the app's own line
            data = {**extras, "event": record.getMessage()}
        data |= {"level": record.levelname.lower(), "logger": record.name, "timestamp": timestamp}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


#: What JOB_PROCESSOR_LOG_FORMAT takes, in any case (empty: unset, the console renderer).
LOG_FORMATS = ("console", "json")


def checked_log_format() -> str:
    """JOB_PROCESSOR_LOG_FORMAT, checked: a value a log pipeline did not mean (`jsonl`, a
    typo) is bad input naming the variable, never the console renderer without a word."""
    given = os.environ.get("JOB_PROCESSOR_LOG_FORMAT") or ""
    chosen = given.strip().lower() or "console"
    if chosen not in LOG_FORMATS:
        raise UsageError(
            f"JOB_PROCESSOR_LOG_FORMAT={given!r}: give json (one JSON object per line) or "
            "console, or leave it unset (console)"
        )
    return chosen


def configure_logging(level: str, log_format: str | None = None) -> None:
    """`log_format`: "json" or "console" (None: JOB_PROCESSOR_LOG_FORMAT's, checked)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    json_lines = (log_format or checked_log_format()) == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StdlibFormatter(json_lines))
    logging.basicConfig(level=lvl, handlers=[handler])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer()
            if json_lines
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _metrics_port_in_use(host: str, port: int) -> str | None:
    """Why --metrics-port cannot be served, said before anything is registered (None: free).
    The address is resolved as the metrics server resolves it (the first of getaddrinfo)."""
    if not 0 <= port <= 65535:
        return f"--metrics-port {port}: a port is a number from 0 to 65535"
    if port == 0:
        return None
    where = f"--metrics-port {port} on {host}"
    try:
        bound_socket(host, port, resolve=True).close()
    except socket.gaierror as exc:
        return f"{where}: cannot resolve {host!r} ({exc.strerror or exc}): check --metrics-host"
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return f"{where}: {exc.strerror or exc}"
        free = free_port_near(host, port, resolve=True)
        other = f"e.g. --metrics-port {free} (free now)" if free else "or --metrics-port 0"
        return f"{where}: already in use: pick another port, {other}"
    return None


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor (`asyncio.to_thread`, `run_in_executor(None, ...)`), counting
    the calls still running: a handler cancelled at its `await asyncio.to_thread(...)` leaves
    its thread running, which `asyncio.run` would wait for, for ever, before exiting."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self.busy = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.busy += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            with self._lock:
                self.busy -= 1
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self.busy -= 1


async def cmd_run(args: argparse.Namespace) -> int:
    if args.metrics_host is not None and args.metrics_port is None:
        raise UsageError(  # it serves nothing: said, not ignored
            f"--metrics-host {args.metrics_host} needs --metrics-port (e.g. --metrics-port "
            "9100): without it no metrics are served"
        )
    args.metrics_host = args.metrics_host or "127.0.0.1"
    threads = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(threads)
    metrics: Any = None
    if args.metrics_port is not None:
        try:  # said before anything starts (it waited for MongoDB first: exit 3 in an outage)
            from ..ops import metrics
        except ImportError:
            raise UsageError(
                "--metrics-port needs prometheus-client: pip install 'job-processor[metrics]'"
            ) from None
        busy = _metrics_port_in_use(args.metrics_host, args.metrics_port)
        if busy is not None:
            raise UsageError(busy)
    stop = asyncio.Event()
    # until serve() takes the signals over: a SIGTERM while it starts (its import, MongoDB's
    # ping, the metrics server) stops it, nothing started
    with stop_on_signals(stop, ignore_after=True):  # repeated while it exits: ignored
        building = asyncio.create_task(build_processor(args.target, args.tags))
        if not await unless_set(building, stop):
            print("stopped before it started (SIGTERM or SIGINT)", file=sys.stderr)
            return 0
        processor = building.result()
        server = None
        if metrics is not None:
            try:
                server = metrics.serve(
                    metrics.enable(processor), args.metrics_port, args.metrics_host
                )
            except (OSError, OverflowError) as exc:
                taken = getattr(exc, "errno", None) == errno.EADDRINUSE
                raise UsageError(
                    f"--metrics-port {args.metrics_port} on {args.metrics_host}: "
                    + ("already in use: pick another port" if taken else str(exc))
                ) from None
            processor.log.info(  # the port bound: the system's choice for --metrics-port 0
                "metrics_served", host=args.metrics_host, port=server.port, path="/metrics"
            )
        try:
            await processor.serve(stop)
        except Exception as exc:
            unreachable = isinstance(exc, DatabaseUnreachableError) or is_transient(exc)
            if unreachable and not processor.started:  # gone since init: no start
                db = processor.storage.db
                said = exc if isinstance(exc, DatabaseUnreachableError) else None
                print(f"error: {said or unreachable_at_start(db, exc)}", file=sys.stderr)
                # its monitor, cancelled by asyncio.run mid-connect, kept the exit ~10 s
                with contextlib.suppress(Exception):
                    await close_database(db)
                exit_if_handlers_left(processor, UNREACHABLE, threads)
                return UNREACHABLE
            # a crashed loop: said (processor_loop_crashed), non-zero
            exit_if_handlers_left(processor, 1, threads)
            raise
        finally:
            if server is not None:
                server.close()
        code = 130 if processor.stop_forced else 0
        exit_if_handlers_left(processor, code, threads)
        return code


def exit_if_handlers_left(
    processor: Runtime, code: int, threads: CountingExecutor | None = None
) -> None:
    """The stop is over, but user code still runs: an async handler or hook that swallowed its
    cancellation (`handler_ignored_cancel`, a hook past its timeout), a thread of the loop's
    default executor (a handler cancelled at its `await asyncio.to_thread(...)`), or, after a
    forced stop, the runs left to recovery. Leaving `asyncio.run` would wait for them for ever
    (it cancels every task left and waits for each, then joins the executor's threads), and
    the container be killed instead. Exit now."""
    left = sum(1 for task in processor.worker.ignoring_cancel if not task.done())
    left += sum(1 for task in processor.hooks.left_running if not task.done())
    if processor.stop_forced:  # its runs and the hooks it took over: left to recovery
        left += len(processor.worker.runs) + processor.hooks.running()
    busy = threads.busy if threads is not None else 0
    if not left and not busy:
        return
    processor.log.warning(
        "process_exiting", handlers_left_running=left, threads_left_running=busy, exit_code=code
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


async def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from ..dashboard.serve import run
    except ImportError as exc:
        raise UsageError(
            f"the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'job-processor[dashboard]'"
        ) from None
    return await run(args)
