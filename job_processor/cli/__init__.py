"""`job-processor` command line: run an app's processor, the demo, the dashboard, and the
operations commands (jobs, crons, workers, names, events, webhooks, status, health, kill).

One module per area: `run` (run, dashboard), `jobs`, `crons`, `names` (names and workers),
`events` (events and webhooks), `status` (status, health); `parser` builds the argument parser,
`common` holds the exit codes, the Admin opened from MONGODB_URL and the output helpers.

May import: every layer below (`ops`, `events`, `engine`, `storage`, `core`), and the
dashboard (an optional extra, imported when its command runs). The commands that need the public
top level (the demo) are given to `main()` by the entry point (`job_processor.__main__`).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TextIO

from pymongo.errors import PyMongoError

from ..core.clock import check_window
from ..core.errors import InvalidArgumentError, JobProcessorError
from . import common
from .parser import build_parser, env_log_level, parse
from .run import RunContext, checked_log_format, configure_logging

__all__ = ["RunContext", "build_parser", "main"]

Command = Callable[..., Awaitable[int]]


#: Commands whose output is their own (a worker's log lines, a server's banner): printed as
#: they are. Every other command's output, and every usage error, shows control characters
#: as escapes (`common.VisibleStream`).
OWN_OUTPUT = frozenset({"run", "demo", "dashboard", "server"})


def main(
    argv: Sequence[str] | None = None,
    *,
    commands: dict[str, Command] | None = None,
    exiting: bool = False,
) -> int:
    """Run the command line. `commands`: the functions of the commands the parser declares
    without one (the demo, given by the entry point). `run`, `server` and `demo` ignore a
    SIGTERM or SIGINT repeated once their stop is over; `exiting` (the entry point's process,
    which exits with the code returned) keeps them ignored until the exit, else the caller's
    handling of both comes back when this returns."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = common.VisibleStream(out), common.VisibleStream(err)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _main(argv, commands, out, err)
        out.flush()  # a closed pipe is met here, not by the flush at exit (exit 120)
        return code
    except SystemExit:  # --help, a usage error: what argparse printed is flushed too
        try:
            out.flush()
        except BrokenPipeError:
            raise SystemExit(output_closed()) from None
        raise
    except BrokenPipeError:
        return output_closed()
    finally:
        sys.stdout, sys.stderr = out, err
        if not exiting and threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None and signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)


#: The environment variables job-processor reads under its prefix (the tests' own aside).
KNOWN_VARIABLES = frozenset(
    {
        "JOB_PROCESSOR_WORKER_TAGS",
        "JOB_PROCESSOR_LOG_FORMAT",
        "JOB_PROCESSOR_WEBHOOK_SECRETS",
        "JOB_PROCESSOR_DASHBOARD_AUTH",
    }
)


def misspelt_variables(environ: Mapping[str, str]) -> list[str]:
    """What to say of variables that look meant for job-processor but are not read: another
    JOB_PROCESSOR_ name (`JOB_PROCESSOR_WORKER_TAG`), LOG_FORMAT (LOG_LEVEL has no prefix,
    the format has one)."""
    said = []
    for name in sorted(environ):
        if not name.startswith("JOB_PROCESSOR_") or name in KNOWN_VARIABLES:
            continue
        if name.startswith("JOB_PROCESSOR_TEST_"):
            continue
        meant = difflib.get_close_matches(name, sorted(KNOWN_VARIABLES), n=1, cutoff=0.6)
        hint = f" (did you mean {meant[0]!r}?)" if meant else ""
        said.append(f"{name} is not a variable job-processor reads{hint}")
    if environ.get("LOG_FORMAT") and "JOB_PROCESSOR_LOG_FORMAT" not in environ:
        said.append("LOG_FORMAT is not read: the log format is JOB_PROCESSOR_LOG_FORMAT")
    return said


def _main(
    argv: Sequence[str] | None,
    commands: dict[str, Command] | None,
    out: TextIO,
    err: TextIO,
) -> int:
    parser = build_parser()
    args = parse(parser, list(argv if argv is not None else sys.argv[1:]))
    if args.command in OWN_OUTPUT:
        sys.stdout, sys.stderr = out, err
    if args.func is None:
        given_func = (commands or {}).get(args.command)
        if given_func is None:
            print(
                f"error: {args.command!r} is run by the job-processor command "
                "(python -m job_processor)",
                file=sys.stderr,
            )
            return common.BAD_INPUT
        args.func = given_func
    given = list(argv if argv is not None else sys.argv[1:])
    ignored = [o for o in ("--timeout", "--prefix") if any(a.split("=")[0] == o for a in given)]
    if args.command == "run" and ignored:  # the app factory's init_job_processor decides these
        print(
            f"error: {' and '.join(ignored)} {'apply' if len(ignored) > 1 else 'applies'} to "
            "operations commands; for run, pass "
            "init_job_processor(connect_timeout=..., collection_prefix=...) in the app factory",
            file=sys.stderr,
        )
        return common.BAD_INPUT
    # a health check exits 0 or 1, whatever the reason (a Docker HEALTHCHECK reserves exit 2):
    # a logging variable it does not use (it logs warnings only) is no bad input for it
    probe = args.command == "health"
    if args.log_level is None:
        try:
            args.log_level = "warning" if probe else env_log_level()
        except argparse.ArgumentTypeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return common.BAD_INPUT
    quiet = {"demo": "error"}
    operations = args.command not in ("run", "demo")
    level = quiet.get(args.command, args.log_level)
    if operations and not any(a.split("=")[0] == "--log-level" for a in given):
        level = "warning"  # operations print results; logs only when asked for
    try:
        log_format = checked_log_format()
    except common.UsageError as exc:
        if not probe:
            print(f"error: {exc}", file=sys.stderr)
            return common.BAD_INPUT
        log_format = "console"
    configure_logging(level, log_format)
    for line in misspelt_variables(os.environ):  # health too: its exit code is unchanged
        print(f"warning: {line}", file=sys.stderr)
    try:
        check_window(
            getattr(args, "since", None), getattr(args, "until", None), "--since", "--until"
        )
    except InvalidArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return common.BAD_INPUT
    try:
        return int(asyncio.run(args.func(args)))
    except common.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return common.BAD_INPUT
    except JobProcessorError as exc:
        return common.handle_errors(exc, args.command)
    except PyMongoError as exc:
        if not operations:
            raise
        print(f"error: MongoDB: {str(exc).split(',')[0]}", file=sys.stderr)
        return common.UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jobs show ID | head`: the reader left; no traceback
        return output_closed()


#: The exit code of a command whose reader closed the pipe (as SIGPIPE's: 128 + 13).
OUTPUT_CLOSED = 141


def output_closed() -> int:
    """Stop writing to a pipe the reader closed: what is still buffered goes nowhere (else
    Python reports the BrokenPipeError again when it flushes stdout at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return OUTPUT_CLOSED
