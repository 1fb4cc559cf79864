"""`job-processor crons ...`: list, trigger, remove."""

from __future__ import annotations

import argparse

from ..ops.admin import Admin
from .common import DONE, emit_json, reported, table, when, with_admin


async def crons_list(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        crons = await admin.list_crons()
        if args.json:
            emit_json([c.model_dump(mode="json") for c in crons])
            return DONE
        rows = []
        for c in crons:
            last = c.recent[0] if c.recent else None
            rows.append(
                [
                    c.name,
                    c.cron_string,
                    c.timezone,
                    when(c.next_slot_utc),
                    f"{last.status.value} {when(last.slot)}" if last else "-",
                    c.missed_recent,
                    len(c.served_by),
                    "yes" if c.paused else "",
                ]
            )
        table(["NAME", "SCHEDULE", "TZ", "NEXT (UTC)", "LAST", "MISSED", "WORKERS", "PAUSED"], rows)
        return DONE

    return await with_admin(args, run)


async def crons_trigger(args: argparse.Namespace) -> int:
    return await with_admin(args, lambda a: reported(a.trigger_cron(args.name), args.json))


async def crons_remove(args: argparse.Namespace) -> int:
    return await with_admin(args, lambda a: reported(a.remove_crons(args.name), args.json))
