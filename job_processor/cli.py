"""`job-processor` command line: run an app's processor, the demo, status and kill."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
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
    await processor.serve()
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    processor = await build_processor(args.target, None)
    status = await processor.get_status()
    print(json.dumps(status.model_dump(mode="json"), indent=2))
    return 0


async def cmd_kill(args: argparse.Namespace) -> int:
    processor = await build_processor(args.target, None)
    job = await processor.kill_job(args.job_id)
    print(
        f"{job.id} {job.name}: {job.status.value}"
        + (" (kill requested: its worker aborts it)" if job.status == "running" else "")
    )
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(os.environ.get("MONGODB_URL"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="job-processor", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve MODULE:ATTR's processor until SIGTERM/SIGINT")
    p.add_argument("target", help="MODULE:ATTR, an async function returning the JobProcessor")
    p.add_argument(
        "--tags", help="worker tags, comma-separated (default: JOB_PROCESSOR_WORKER_TAGS)"
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="print workers, queue and job counts as JSON")
    p.add_argument("target")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("kill", help="kill a job by id, whichever worker runs it")
    p.add_argument("target")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_kill)
    p = sub.add_parser("demo", help="show the product working (starts a local server if needed)")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    quiet = {"demo": "error", "status": "warning", "kill": "warning"}
    configure_logging(quiet.get(args.command, args.log_level))
    try:
        return int(asyncio.run(args.func(args)))
    except JobProcessorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
