"""`job-processor workers list` and `job-processor names ...`: list, pause, resume."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.errors import InvalidArgumentError, JobProcessorError
from ..ops.admin import ActionResult, Admin
from .common import ago, listed, report, reported, when, with_admin


async def workers_list(args: argparse.Namespace) -> int:
    def row(w: Any) -> list[Any]:
        return [
            w.id,
            w.hostname,
            w.pid,
            w.instance_id,
            ",".join(w.tags) if w.tags else "any",
            len(w.running_jobs),
            ago(w.seconds_since_heartbeat) + " ago",
            ("CRASHED" if w.crashed else "yes") if w.alive else "NO",  # crashed: claims nothing
        ]

    headers = ["ID", "HOST", "PID", "INSTANCE", "TAGS", "RUNNING", "HEARTBEAT", "ALIVE"]
    return await with_admin(args, lambda a: listed(a.list_workers(), args.json, headers, row))


async def names_list(args: argparse.Namespace) -> int:
    def row(v: Any) -> list[Any]:
        return [
            v.name,
            v.kind,
            v.tag,
            v.concurrency,
            v.max_attempts,
            len(v.served_by),
            "yes" if v.paused else "",
            when(v.last_seen),
        ]

    headers = [
        "NAME",
        "KIND",
        "TAG",
        "CONCURRENCY",
        "ATTEMPTS",
        "WORKERS",
        "PAUSED",
        "LAST SEEN (UTC)",
    ]
    return await with_admin(args, lambda a: listed(a.list_definitions(), args.json, headers, row))


async def names_forget(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.name))
    if len(names) == 1:  # an unknown name is bad input (exit 2), as it always was
        return await with_admin(args, lambda a: reported(a.forget(names[0]), args.json))

    async def run(admin: Admin) -> int:
        results: list[ActionResult] = []
        refused: dict[str, JobProcessorError] = {}
        for name in names:  # each on its own, as `jobs kill` takes each id
            try:
                results.append(await admin.forget(name))
            except JobProcessorError as exc:  # unknown, or not a name: said, the others done
                refused[name] = exc
        if not results:  # none could be: bad input, as for one, each one named
            first = next(iter(refused.values()))
            if len(refused) == 1:
                raise first
            raise InvalidArgumentError(
                "; ".join(f"{name}: {exc}" for name, exc in refused.items())
            ) from first
        merged = results[0].model_copy(
            update={
                "changed": [n for r in results for n in r.changed],
                "skipped": {k: v for r in results for k, v in r.skipped.items()}
                | {name: str(exc) for name, exc in refused.items()},
                "count": sum(r.count for r in results),
                "detail": {k: v for r in results for k, v in r.detail.items()},
            }
        )
        return report(merged, args.json)

    return await with_admin(args, run)


async def names_pause(args: argparse.Namespace) -> int:
    verb = "pause" if args.names_command == "pause" else "resume"
    return await with_admin(args, lambda a: reported(getattr(a, verb)(args.name), args.json))
