"""The `job-processor` argument parser: every verb and its own options."""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import itertools
import os
import re
import shlex
from contextvars import ContextVar
from typing import NoReturn

from ..core.errors import InvalidArgumentError, InvalidDefinitionError
from ..core.settings import check_prefix
from ..ops.admin.inputs import parse_time
from . import crons as crons_cli
from . import events as events_cli
from . import jobs as jobs_cli
from . import names as names_cli
from . import run, server
from . import status as status_cli


def seconds(text: str) -> float:
    """A number of seconds above 0 and finite (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.001 <= value < float("inf"):  # NaN fails this too; the driver counts in ms
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of seconds of at least 0.001, e.g. 5"
        )
    return value


#: The levels --log-level and LOG_LEVEL take, in any case.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def env_log_level() -> str:
    """LOG_LEVEL's level, "info" when unset or empty (`LOG_LEVEL=`: docker compose's
    `- LOG_LEVEL`); argparse.ArgumentTypeError for a value that is none."""
    return log_level(os.environ.get("LOG_LEVEL") or "info")


def log_level(text: str) -> str:
    """A log level (argparse type; LOG_LEVEL, the default, is checked the same way)."""
    level = text.strip().lower()
    level = "warning" if level == "warn" else level
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: give one of {', '.join(LOG_LEVELS)} "
            "(--log-level, or LOG_LEVEL)"
        )
    return level


def collection_prefix(text: str) -> str:
    """A collection prefix as init_job_processor takes it (argparse type)."""
    try:
        return check_prefix(text)
    except InvalidDefinitionError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the collection_prefix given to init_job_processor (not empty, "
            "without '.' or '$'), e.g. job_processor_"
        ) from None


def root_path(text: str) -> str:
    """A path prefix (argparse type): "/jobs" (a trailing "/" dropped), or "" for none."""
    value = text.strip().rstrip("/")
    if value and not value.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a path prefix starts with '/', e.g. /jobs (the path a reverse proxy "
            "serves the dashboard under)"
        )
    return value


def iso_time(text: str) -> dt.datetime | None:
    """A date option (--at, --since, --until): ISO 8601, UTC when it has no offset; refused
    before anything is sent, naming the option. An empty one (a script's unset variable) is
    refused, not taken as not given (`--at ""` ran the job at once)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty (an unset variable?): give a date, e.g. 2030-01-31T09:00:00Z, or leave "
            "the option out"
        )
    try:
        value = parse_time(text, "date")
    except InvalidArgumentError as exc:
        if "out of range" in str(exc):  # a date, but not one in years 1 to 9999 in UTC
            raise argparse.ArgumentTypeError(str(exc).removeprefix("date ")) from None
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use ISO 8601, e.g. 2030-01-31T09:00:00Z or 2030-01-31 "
            "(UTC when no offset is given)"
        ) from None
    return value


def payload_text(text: str) -> str:
    """--payload: a JSON object's text; an empty one (an unset variable) is refused, not taken
    as {}."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            'is empty (an unset variable?): give a JSON object, e.g. \'{"to": "ada"}\', or '
            "leave --payload out for {}"
        )
    return text


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Options are spelled out (`--time 9` is not `--timeout 9`), in every subcommand."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


#: The words `parse` reads, for a refusal's hint (unset: a parser used on its own).
_ARGV: ContextVar[list[str] | None] = ContextVar("job_processor_cli_argv", default=None)

_EXPECTED = re.compile(r"argument (\S+): expected one argument")


class Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose refusal says so when a value that starts
    with '-' was read as an option (`names pause -x`: "the following arguments are required:
    name"), with the command that takes it, as the hints of core.commands write it."""

    def error(self, message: str) -> NoReturn:
        argv = _ARGV.get()
        hint = _dash_hint(self, message, argv) if argv is not None else None
        super().error(f"{message} ({hint})" if hint else message)


def _dash_hint(parser: argparse.ArgumentParser, message: str, argv: list[str]) -> str | None:
    """How to give the value `argv` holds that `parser` read as an option: after `--` for an
    argument, joined to its option (`--name=-x`) for an option's value."""
    if "--" in argv:
        return None
    options = {o for a in parser._actions for o in a.option_strings}
    expected = _EXPECTED.fullmatch(message)
    if expected:
        flags = expected.group(1).split("/")
        for i, (flag, value) in enumerate(itertools.pairwise(argv)):
            if flag in flags and value.startswith("-") and value.split("=")[0] not in options:
                fixed = [*argv[:i], f"{flag}={value}", *argv[i + 2 :]]
                return (
                    f"{value!r} was read as an option: join it to {flag}, "
                    f"`job-processor {shlex.join(fixed)}`"
                )
        return None
    if not message.startswith("the following arguments are required"):
        return None
    for i, word in enumerate(argv):
        if len(word) > 1 and word.startswith("-") and word.split("=")[0] not in options:
            fixed = [*argv[:i], *argv[i + 1 :], "--", word]
            return (
                f"{word!r} was read as an option: a value that starts with '-' goes after --, "
                f"`job-processor {shlex.join(fixed)}`"
            )
    return None


def build_parser() -> argparse.ArgumentParser:
    # accepted before or after the subcommand: subparsers only set what was given
    common = Parser(add_help=False)
    common.add_argument(
        "--log-level",
        type=log_level,
        default=argparse.SUPPRESS,
        help="debug, info, warning, error, critical (LOG_LEVEL)",
    )
    common.add_argument(
        "--timeout",
        type=seconds,
        default=argparse.SUPPRESS,
        help="seconds to wait for MongoDB (default 5)",
    )
    common.add_argument(
        "--prefix",
        type=collection_prefix,
        default=argparse.SUPPRESS,
        help="collection prefix given to init_job_processor (default job_processor_)",
    )
    # run and demo: --timeout and --prefix are the app factory's (init_job_processor), so they
    # are not shown; main() explains that when they are given
    logging_only = Parser(add_help=False)
    logging_only.add_argument(
        "--log-level",
        type=log_level,
        default=argparse.SUPPRESS,
        help="debug, info, warning, error, critical (LOG_LEVEL)",
    )
    refused = Parser(add_help=False, parents=[logging_only])
    refused.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    refused.add_argument("--prefix", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    # the commands that act record --actor in the audit log; those that only read accept it
    # (scripts pass it everywhere) without offering it
    opt = Parser(add_help=False, parents=[common])
    opt.add_argument("--json", action="store_true", help="machine-readable output")
    reading = Parser(add_help=False, parents=[opt])
    opt.add_argument(
        "--actor", default=argparse.SUPPRESS, help="who to record in the audit log (user@host)"
    )
    reading.add_argument("--actor", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    parser = Parser(
        prog="job-processor",
        description="Run a job processor, or operate one from MONGODB_URL alone "
        "(exit codes: 0 done, 1 nothing done, 2 bad input, 3 MongoDB unreachable).",
        epilog="Each command's options: job-processor COMMAND --help.",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=None,  # LOG_LEVEL, checked by main() (not for `health`: see env_log_level)
        help="debug, info, warning, error, critical (LOG_LEVEL)",
    )
    # accepted before the command too, but shown only by the commands that take them
    parser.add_argument("--timeout", type=seconds, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--prefix", type=collection_prefix, default="job_processor_", help=argparse.SUPPRESS
    )
    parser.add_argument("--actor", default="", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        parents=[refused],
        help="serve MODULE:ATTR's processor until SIGTERM/SIGINT",
        description="Run a worker: import MODULE, call ATTR (async def make(ctx) or make()) to "
        "get the JobProcessor, and serve it until SIGTERM/SIGINT (a graceful stop). Needs "
        "MONGODB_URL (given to the factory as ctx.mongodb_url and ctx.db).",
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
    p.add_argument(
        "--metrics-host",
        default=None,
        help="default 127.0.0.1 (this machine only: the metrics have no auth); 0.0.0.0 in a "
        "container whose port a Prometheus on the network scrapes",
    )
    p.set_defaults(func=run.cmd_run)
    p = sub.add_parser(
        "demo", parents=[refused], help="show the product working (starts a local server)"
    )
    p.set_defaults(func=None)  # given by the entry point: see main()
    p = sub.add_parser(
        "server",
        parents=[logging_only],
        help="a local MongoDB-compatible server for development (keeps its data; Ctrl-C stops)",
        description="Start nx-27017 (MongoDB's wire protocol over SQLite, from the demo extra) "
        "on 127.0.0.1 for development, keeping its data in --data-dir, and print the "
        "MONGODB_URL to use. Ctrl-C or SIGTERM stops it. Production runs on MongoDB.",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"where it keeps its data (default: {server.default_data_dir()})",
    )
    p.add_argument(
        "--port", type=int, default=server.DEFAULT_PORT, help="default 27017 (MongoDB's)"
    )
    p.set_defaults(func=server.cmd_server)

    p = sub.add_parser(
        "status",
        parents=[reading],
        help="workers, queue, counts by name, crons, warnings (or --json)",
    )
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)  # the old MODULE:ATTR: ignored
    p.set_defaults(func=status_cli.status)
    p = sub.add_parser(
        "health", parents=[reading], help="exit 0 if this instance's heartbeat is fresh, else 1"
    )
    p.add_argument("--instance-id", default=None, help="default: INSTANCE_ID")
    p.add_argument(
        "--max-age",
        type=seconds,
        default=None,
        help="seconds a heartbeat stays fresh (default: the worker's worker_timeout)",
    )
    p.set_defaults(func=status_cli.health)
    p = sub.add_parser("kill", parents=[opt], help="kill jobs (same as `jobs kill ID...`)")
    p.add_argument("args", nargs="+", metavar="JOB_ID")
    p.set_defaults(func=jobs_cli.legacy_kill)

    jobs = sub.add_parser("jobs", help="list, show and act on jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    p = jobs.add_parser("list", parents=[reading], help="jobs newest first")
    p.add_argument("--name")
    p.add_argument(
        "--status", help="waiting, pending, running, paused, finished, errored, killed, skipped"
    )
    p.add_argument("--tag")
    p.add_argument("--key", help="dedup key")
    p.add_argument("--since", type=iso_time, help="created at or after (ISO 8601, UTC by default)")
    p.add_argument("--until", type=iso_time, help="created before (ISO 8601)")
    p.add_argument("--id", help="this job only")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="the next-page cursor printed by the previous page")
    p.set_defaults(func=jobs_cli.jobs_list)
    p = jobs.add_parser("show", parents=[reading], help="one job in full")
    p.add_argument("job_id")
    p.add_argument("--logs", action="store_true", help="also the handler's own log lines (job.log)")
    p.set_defaults(func=jobs_cli.jobs_show)
    p = jobs.add_parser("retry", parents=[opt], help="retry errored/killed jobs")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    p.add_argument("--name")
    p.add_argument("--status", type=str.lower, choices=["errored", "killed"])
    p.add_argument("--limit", type=int, default=10_000)
    p.set_defaults(func=jobs_cli.jobs_retry)
    for verb, method, text in (
        ("kill", "kill", "kill jobs (running ones: their worker aborts them)"),
        ("run-now", "run_now", "make pending jobs scheduled for later due now"),
        ("delete", "delete", "delete ended jobs"),
    ):
        p = jobs.add_parser(verb, parents=[opt], help=text)
        p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        p.set_defaults(func=jobs_cli.action(method))
    p = jobs.add_parser("purge", parents=[opt], help="delete ended jobs older than a duration")
    p.add_argument("--status", required=True, help="finished, errored, killed or skipped")
    p.add_argument("--older-than", required=True, help="ended more than this ago: 7d, 12h, 30m")
    p.add_argument("--name")
    p.set_defaults(func=jobs_cli.jobs_purge)
    p = jobs.add_parser(
        "new",
        parents=[opt],
        help="schedule a job of a registered name",
        description="Schedule a job of a name a worker has registered (see `names list`); a "
        "worker that defines it runs it.",
    )
    p.add_argument("name", help="the job's name, as given to init_job_processor(jobs={...})")
    p.add_argument("--payload", type=payload_text, default="{}", help="a JSON object")
    p.add_argument("--at", type=iso_time, help="scheduled for (ISO 8601; default now)")
    p.add_argument(
        "--priority", type=int, default=0, help="higher runs first among due jobs (default 0)"
    )
    p.add_argument("--key", help="dedup key")
    p.set_defaults(func=jobs_cli.jobs_new)
    p = jobs.add_parser("duplicate", parents=[opt], help="a new pending copy of a job")
    p.add_argument("job_id")
    p.set_defaults(func=jobs_cli.jobs_duplicate)

    crons = sub.add_parser("crons", help="list, trigger and remove crons").add_subparsers(
        dest="crons_command", required=True
    )
    p = crons.add_parser("list", parents=[reading], help="schedules, next slot, last runs")
    p.set_defaults(func=crons_cli.crons_list)
    p = crons.add_parser("trigger", parents=[opt], help="run a cron once now")
    p.add_argument("name")
    p.set_defaults(func=crons_cli.crons_trigger)
    p = crons.add_parser(
        "remove",
        parents=[opt],
        help="remove crons no live worker defines, with their pending tasks",
    )
    p.add_argument("name", nargs="+")
    p.set_defaults(func=crons_cli.crons_remove)

    workers = sub.add_parser("workers", help="list workers").add_subparsers(
        dest="workers_command", required=True
    )
    p = workers.add_parser("list", parents=[reading], help="host, pid, instance, tags, heartbeat")
    p.set_defaults(func=names_cli.workers_list)

    names = sub.add_parser("names", help="job names: list, pause, resume, forget").add_subparsers(
        dest="names_command", required=True
    )
    p = names.add_parser("list", parents=[reading], help="registered names and who serves them")
    p.set_defaults(func=names_cli.names_list)
    for verb in ("pause", "resume"):
        p = names.add_parser(
            verb,
            parents=[opt],
            help="workers stop claiming NAME" if verb == "pause" else "claim NAME again",
        )
        p.add_argument("name")
        p.set_defaults(func=names_cli.names_pause)
    p = names.add_parser(
        "forget",
        parents=[opt],
        help="remove a name no worker defines any more from the registry",
        description="Remove each NAME from the registry (a job renamed or removed from the "
        "code): status stops warning about it. Refused while a live worker serves it or jobs of "
        "it are active; its ended jobs stay.",
    )
    p.add_argument("name", nargs="+", metavar="NAME")
    p.set_defaults(func=names_cli.names_forget)

    events = sub.add_parser("events", help="list, show and replay events").add_subparsers(
        dest="events_command", required=True
    )
    p = events.add_parser("list", parents=[reading], help="events newest first")
    p.add_argument("--name", help="one event name")
    p.add_argument("--since", type=iso_time, help="emitted at or after (ISO 8601, UTC by default)")
    p.add_argument("--until", type=iso_time, help="emitted before (ISO 8601)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="the next-page cursor printed by the previous page")
    p.set_defaults(func=events_cli.events_list)
    p = events.add_parser("show", parents=[reading], help="one event with its deliveries")
    p.add_argument("event_id")
    p.set_defaults(func=events_cli.events_show)
    p = events.add_parser(
        "replay",
        parents=[opt],
        help="deliver an event again (new deliveries), or every event of a name in a window",
    )
    p.add_argument("event_id", nargs="?", help="the event (or give --name and --since)")
    p.add_argument("--name", help="replay the events of this name emitted in --since/--until")
    p.add_argument("--since", type=iso_time, help="with --name: emitted at or after (ISO 8601)")
    p.add_argument(
        "--until", type=iso_time, help="with --name: emitted before (ISO 8601; default now)"
    )
    p.add_argument(
        "--subscriber",
        action="append",
        metavar="S",
        help="only this subscriber (or webhook:<endpoint id>); repeat for more (default: all)",
    )
    p.add_argument("--limit", type=int, default=1000, help="with --name: at most this many")
    p.set_defaults(func=events_cli.events_replay)

    webhooks = sub.add_parser("webhooks", help="list webhook endpoints").add_subparsers(
        dest="webhooks_command", required=True
    )
    p = webhooks.add_parser(
        "list", parents=[reading], help="url (no query), events, enabled, failures, disabled reason"
    )
    p.set_defaults(func=events_cli.webhooks_list)

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
    p.add_argument(
        "--sensitive-fields",
        help="comma-separated field names never shown, added to the default ones (password, "
        "token, ...)",
    )
    p.add_argument(
        "--root-path",
        type=root_path,
        default="",
        help="path prefix a reverse proxy serves it under, e.g. /jobs",
    )
    p.add_argument(
        "--allowed-hosts",
        action="append",
        metavar="HOSTS",
        help="host names it answers to, comma-separated (default without auth: localhost, "
        "*.localhost, 127.0.0.1, ::1; with auth: any); others get a 400",
    )
    p.set_defaults(func=run.cmd_dashboard)
    _no_abbreviations(parser)
    return parser


#: Options a newcomer tries for "later" (Python's `delay=`, Celery's `countdown`/`eta`).
LATER = {"--delay", "--in", "--countdown", "--eta", "--after", "--when", "--later"}


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with an unknown option explained: the command's own option it resembles
    (`--state`: did you mean --status?), or an option of the command given before it
    (`job-processor --json jobs list`: --json goes after the subcommand), or a JSON payload
    given without `--payload`; an option of one value given twice (`--key a --key b`) is
    refused instead of the last one silently winning."""
    token = _ARGV.set(argv)
    try:
        args, extras = parser.parse_known_args(argv)
    finally:
        _ARGV.reset(token)
    leaf, path = _leaf(parser, args)
    _refuse_repeated(leaf, path[1:], argv, parser)
    after_dashes = set(argv[argv.index("--") + 1 :]) if "--" in argv else set()
    if not extras:
        return args
    known = sorted({o for a in leaf._actions for o in a.option_strings if o.startswith("--")})
    shown = [o for a in leaf._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
    hints = []
    for extra in extras:
        option = extra.split("=")[0]
        if extra.lstrip().startswith("{") and "--payload" in known:  # `jobs new NAME '{...}'`
            hints.append(f"the payload goes after --payload: --payload {shlex.quote(extra)}")
            continue
        if not option.startswith("-") or extra in after_dashes:  # after --: never an option
            continue
        if option in known:
            hints.append(f"{option} goes after the subcommand: {' '.join(path)} ... {option}")
            continue
        if option in LATER and "--at" in shown:  # Python's delay=: the CLI takes a time
            hints.append("to schedule it later, give the time: --at 2030-01-31T09:00Z (UTC)")
            continue
        # compared without the dashes, which every option shares (`--delay` is not `--key`)
        bare = {o.lstrip("-"): o for o in shown}
        close = difflib.get_close_matches(option.lstrip("-"), list(bare), n=1, cutoff=0.6)
        if close:
            hints.append(f"did you mean {bare[close[0]]}?")
    text = f"unrecognized arguments: {' '.join(extras)}"
    leaf.error(f"{text} ({'; '.join(hints)})" if hints else text)
    raise AssertionError("unreachable")  # error() exits


def _leaf(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)command's own parser, and the words that name it."""
    leaf, path = parser, [parser.prog]
    while True:
        chosen = None
        for action in leaf._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(args, action.dest or "", None)
                if name in action.choices:
                    chosen = action.choices[name]
                    path.append(str(name))
        if chosen is None:
            return leaf, path
        leaf = chosen


def _refuse_repeated(
    leaf: argparse.ArgumentParser,
    path: list[str],
    argv: list[str],
    root: argparse.ArgumentParser,
) -> None:
    """An option of one value given twice after the subcommand, or twice before it
    (`--actor alice --actor bob jobs run-now ID`). One given once before it and once after
    (the options every command accepts: `job-processor --timeout 5 jobs list --timeout 9`)
    is not refused: the later one wins, as for a wrapper or an alias that adds defaults."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    start = first = 0
    level: argparse.ArgumentParser | None = root
    for name in path:  # the subcommand's words, in order, over the options' values
        takes_value = {
            o
            for a in (level._actions if level else [])
            if a.option_strings and a.nargs != 0
            for o in a.option_strings
        }  # `--prefix jobs jobs list`: the first "jobs" is a value
        while start < len(words) and words[start] != name:
            start += 2 if words[start] in takes_value else 1
        start += 1
        first = first or start
        subs = [a for a in (level._actions if level else []) if isinstance(a, _SubParsers)]
        level = subs[0].choices.get(name) if subs else None
    _once_each(leaf, words[start:])
    _once_each(root, words[: max(first - 1, 0)])


_SubParsers = argparse._SubParsersAction


def _once_each(parser: argparse.ArgumentParser, words: list[str]) -> None:
    for action in parser._actions:
        if not isinstance(action, argparse._StoreAction) or not action.option_strings:
            continue
        given = [w.split("=")[0] for w in words if w.split("=")[0] in action.option_strings]
        if len(given) > 1:
            parser.error(
                f"{given[0]} was given {len(given)} times: it takes one value (give it once)"
            )
