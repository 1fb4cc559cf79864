"""`job-processor` command line: run an app's processor, the demo, the dashboard, and the
operations commands (jobs, crons, workers, names, events, webhooks, status, health, kill)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from .errors import JobProcessorError
from .processor import JobProcessor


@dataclass(frozen=True)
class RunContext:
    """Given to the app's factory when it takes one argument: `async def make(ctx)`."""

    mongodb_url: str
    db: Any
    """pymongo AsyncDatabase: the URL's database, or "job_processor" when the URL names none."""
    instance_id: str | None
    """INSTANCE_ID, e.g. "runner-1" (docker-compose: "runner-{{.Task.Slot}}")."""
    worker_tags: list[str] | None
    """--tags or JOB_PROCESSOR_WORKER_TAGS ("main,reports"); None when unset."""


def parse_tags(value: str | None) -> list[str] | None:
    if value is None or not value.strip():
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def open_database(url: str) -> Any:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    return client.get_default_database(default="job_processor")


def load_factory(target: str) -> Any:
    if ":" not in target:
        raise SystemExit(f"error: {target!r} must be MODULE:ATTR, e.g. myapp.jobs:make_processor")
    module_name, attr = target.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"error: {module_name!r} has no attribute {attr!r}") from None


async def build_processor(target: str, tags: str | None) -> JobProcessor:
    url = os.environ.get("MONGODB_URL")
    if not url:
        raise SystemExit("error: set MONGODB_URL, e.g. mongodb://localhost:27017/myapp")
    factory = load_factory(target)
    ctx = RunContext(
        mongodb_url=url,
        db=open_database(url),
        instance_id=os.environ.get("INSTANCE_ID") or None,
        worker_tags=parse_tags(
            tags if tags is not None else os.environ.get("JOB_PROCESSOR_WORKER_TAGS")
        ),
    )
    params = inspect.signature(factory).parameters
    result = factory(ctx) if params else factory()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, JobProcessor):
        raise SystemExit(
            f"error: {target} returned {type(result).__name__}; it must return the JobProcessor "
            "from init_job_processor(...)"
        )
    return result


def configure_logging(level: str) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format="%(message)s", stream=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer()
            if os.environ.get("JOB_PROCESSOR_LOG_FORMAT") == "json"
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


async def cmd_run(args: argparse.Namespace) -> int:
    processor = await build_processor(args.target, args.tags)
    server = None
    if args.metrics_port is not None:
        try:
            from . import metrics
        except ImportError:
            raise SystemExit(
                "error: --metrics-port needs prometheus-client: "
                "pip install 'job-processor[metrics]'"
            ) from None
        server = metrics.serve(metrics.enable(processor), args.metrics_port, args.metrics_host)
        processor.log.info(
            "metrics_served", host=args.metrics_host, port=args.metrics_port, path="/metrics"
        )
    try:
        await processor.serve()
    finally:
        if server is not None:
            server.close()
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(os.environ.get("MONGODB_URL"))


async def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard.serve import run
    except ImportError as exc:
        raise SystemExit(
            f"error: the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'job-processor[dashboard]'"
        ) from None
    return await run(args)


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Options are spelled out (`--time 9` is not `--timeout 9`), in every subcommand."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def build_parser() -> argparse.ArgumentParser:
    from . import cli_ops as ops

    # accepted before or after the subcommand: subparsers only set what was given
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="debug, info, warning, error (LOG_LEVEL)"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for MongoDB (default 5)",
    )
    common.add_argument(
        "--prefix",
        default=argparse.SUPPRESS,
        help="collection prefix given to init_job_processor (default job_processor_)",
    )
    opt = argparse.ArgumentParser(add_help=False, parents=[common])
    opt.add_argument("--json", action="store_true", help="machine-readable output")
    opt.add_argument(
        "--actor", default=argparse.SUPPRESS, help="who to record in the audit log (user@host)"
    )

    parser = argparse.ArgumentParser(
        prog="job-processor",
        description="Run a job processor, or operate one from MONGODB_URL alone "
        "(exit codes: 0 done, 1 nothing done, 2 bad input, 3 MongoDB unreachable).",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--prefix", default="job_processor_")
    parser.add_argument("--actor", default="")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run", parents=[common], help="serve MODULE:ATTR's processor until SIGTERM/SIGINT"
    )
    p.add_argument("target", help="MODULE:ATTR, an async function returning the JobProcessor")
    p.add_argument(
        "--tags", help="worker tags, comma-separated (default: JOB_PROCESSOR_WORKER_TAGS)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (job-processor[metrics])",
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="default 0.0.0.0")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "demo", parents=[common], help="show the product working (starts a local server)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", parents=[opt], help="workers, queue, counts, warnings (JSON)")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)  # the old MODULE:ATTR: ignored
    p.set_defaults(func=ops.status)
    p = sub.add_parser(
        "health", parents=[opt], help="exit 0 if this instance's heartbeat is fresh, else 1"
    )
    p.add_argument("--instance-id", default=None, help="default: INSTANCE_ID")
    p.add_argument(
        "--max-age",
        type=float,
        default=None,
        help="seconds a heartbeat stays fresh (default: the worker's worker_timeout)",
    )
    p.set_defaults(func=ops.health)
    p = sub.add_parser("kill", parents=[opt], help="kill a job (same as `jobs kill ID`)")
    p.add_argument("args", nargs="+", metavar="JOB_ID")
    p.set_defaults(func=ops.legacy_kill)

    jobs = sub.add_parser("jobs", help="list, show and act on jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    p = jobs.add_parser("list", parents=[opt], help="jobs newest first")
    p.add_argument("--name")
    p.add_argument("--status", help="pending, running, paused, finished, errored, killed, skipped")
    p.add_argument("--tag")
    p.add_argument("--key", help="dedup key")
    p.add_argument("--since", help="created at or after (ISO 8601, UTC by default)")
    p.add_argument("--until", help="created before (ISO 8601)")
    p.add_argument("--id", help="this job only")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="the next-page cursor printed by the previous page")
    p.set_defaults(func=ops.jobs_list)
    p = jobs.add_parser("show", parents=[opt], help="one job in full")
    p.add_argument("job_id")
    p.set_defaults(func=ops.jobs_show)
    p = jobs.add_parser("retry", parents=[opt], help="retry errored/killed jobs")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    p.add_argument("--name")
    p.add_argument("--status", choices=["errored", "killed"])
    p.add_argument("--limit", type=int, default=10_000)
    p.set_defaults(func=ops.jobs_retry)
    for verb, method, text in (
        ("kill", "kill", "kill jobs (running ones: their worker aborts them)"),
        ("run-now", "run_now", "make pending jobs scheduled for later due now"),
        ("delete", "delete", "delete ended jobs"),
    ):
        p = jobs.add_parser(verb, parents=[opt], help=text)
        p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        p.set_defaults(func=ops.action(method))
    p = jobs.add_parser("purge", parents=[opt], help="delete ended jobs older than a duration")
    p.add_argument("--status", required=True, help="finished, errored, killed or skipped")
    p.add_argument("--older-than", required=True, help="ended more than this ago: 7d, 12h, 30m")
    p.add_argument("--name")
    p.set_defaults(func=ops.jobs_purge)
    p = jobs.add_parser("new", parents=[opt], help="schedule a job of a registered name")
    p.add_argument("name")
    p.add_argument("--payload", default="{}", help="a JSON object")
    p.add_argument("--at", help="scheduled for (ISO 8601; default now)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--key", help="dedup key")
    p.set_defaults(func=ops.jobs_new)
    p = jobs.add_parser("duplicate", parents=[opt], help="a new pending copy of a job")
    p.add_argument("job_id")
    p.set_defaults(func=ops.jobs_duplicate)

    crons = sub.add_parser("crons", help="list and trigger crons").add_subparsers(
        dest="crons_command", required=True
    )
    p = crons.add_parser("list", parents=[opt], help="schedules, next slot, last runs")
    p.set_defaults(func=ops.crons_list)
    p = crons.add_parser("trigger", parents=[opt], help="run a cron once now")
    p.add_argument("name")
    p.set_defaults(func=ops.crons_trigger)

    workers = sub.add_parser("workers", help="list workers").add_subparsers(
        dest="workers_command", required=True
    )
    p = workers.add_parser("list", parents=[opt], help="host, pid, instance, tags, heartbeat")
    p.set_defaults(func=ops.workers_list)

    names = sub.add_parser("names", help="job names: list, pause, resume").add_subparsers(
        dest="names_command", required=True
    )
    p = names.add_parser("list", parents=[opt], help="registered names and who serves them")
    p.set_defaults(func=ops.names_list)
    for verb in ("pause", "resume"):
        p = names.add_parser(
            verb,
            parents=[opt],
            help="workers stop claiming NAME" if verb == "pause" else "claim NAME again",
        )
        p.add_argument("name")
        p.set_defaults(func=ops.names_pause)

    events = sub.add_parser("events", help="list, show and replay events").add_subparsers(
        dest="events_command", required=True
    )
    p = events.add_parser("list", parents=[opt], help="events newest first")
    p.add_argument("--name", help="one event name")
    p.add_argument("--since", help="emitted at or after (ISO 8601, UTC by default)")
    p.add_argument("--until", help="emitted before (ISO 8601)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=ops.events_list)
    p = events.add_parser("show", parents=[opt], help="one event with its deliveries")
    p.add_argument("event_id")
    p.set_defaults(func=ops.events_show)
    p = events.add_parser(
        "replay",
        parents=[opt],
        help="deliver an event again (new deliveries), or every event of a name in a window",
    )
    p.add_argument("event_id", nargs="?", help="the event (or give --name and --since)")
    p.add_argument("--name", help="replay the events of this name emitted in --since/--until")
    p.add_argument("--since", help="with --name: emitted at or after (ISO 8601)")
    p.add_argument("--until", help="with --name: emitted before (ISO 8601; default now)")
    p.add_argument(
        "--subscriber",
        action="append",
        metavar="S",
        help="only this subscriber (or webhook:<endpoint id>); repeat for more (default: all)",
    )
    p.add_argument("--limit", type=int, default=1000, help="with --name: at most this many")
    p.set_defaults(func=ops.events_replay)

    webhooks = sub.add_parser("webhooks", help="list webhook endpoints").add_subparsers(
        dest="webhooks_command", required=True
    )
    p = webhooks.add_parser(
        "list", parents=[opt], help="url (no query), events, enabled, failures, disabled reason"
    )
    p.set_defaults(func=ops.webhooks_list)

    p = sub.add_parser(
        "dashboard", parents=[common], help="serve the web dashboard (job-processor[dashboard])"
    )
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="HTTP basic auth (default: JOB_PROCESSOR_DASHBOARD_AUTH, which stays out of ps)",
    )
    p.add_argument("--no-auth", action="store_true", help="no authentication (a proxy does it)")
    p.add_argument("--read-only", action="store_true", help="hide and refuse every action")
    p.add_argument("--sensitive-fields", help="comma-separated fields never shown")
    p.add_argument("--root-path", default="", help="path prefix a reverse proxy serves it under")
    p.set_defaults(func=cmd_dashboard)
    _no_abbreviations(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pymongo.errors import PyMongoError

    from . import cli_ops as ops

    parser = build_parser()
    args = parser.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    ignored = [o for o in ("--timeout", "--prefix") if any(a.split("=")[0] == o for a in given)]
    if args.command == "run" and ignored:  # the app factory's init_job_processor decides these
        print(
            f"error: {' and '.join(ignored)} {'apply' if len(ignored) > 1 else 'applies'} to "
            "operations commands; for run, pass "
            "init_job_processor(connect_timeout=..., collection_prefix=...) in the app factory",
            file=sys.stderr,
        )
        return ops.BAD_INPUT
    quiet = {"demo": "error"}
    operations = args.command not in ("run", "demo")
    level = quiet.get(args.command, args.log_level)
    if operations and not any(a.split("=")[0] == "--log-level" for a in given):
        level = "warning"  # operations print results; logs only when asked for
    configure_logging(level)
    try:
        return int(asyncio.run(args.func(args)))
    except ops.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ops.BAD_INPUT
    except JobProcessorError as exc:
        return ops.handle_errors(exc, args.command)
    except PyMongoError as exc:
        if not operations:
            raise
        print(f"error: MongoDB: {str(exc).split(',')[0]}", file=sys.stderr)
        return ops.UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
