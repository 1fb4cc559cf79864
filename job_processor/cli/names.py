"""`job-processor workers list` and `job-processor names ...`: list, pause, resume."""

from __future__ import annotations

import argparse
from typing import Any

from .common import ago, listed, reported, when, with_admin


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
            "yes" if w.alive else "NO",
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
    return await with_admin(args, lambda a: reported(a.forget(args.name), args.json))


async def names_pause(args: argparse.Namespace) -> int:
    verb = "pause" if args.names_command == "pause" else "resume"
    return await with_admin(args, lambda a: reported(getattr(a, verb)(args.name), args.json))
