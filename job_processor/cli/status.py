"""`job-processor status` and `job-processor health`."""

from __future__ import annotations

import argparse
import sys

from ..ops import health as health_mod
from ..ops.admin import Admin
from ..storage.connect import close_database, open_database
from .common import DONE, NOTHING, emit_json, mongodb_url, with_admin


async def status(args: argparse.Namespace) -> int:
    if args.target:
        print(
            f"note: {args.target} is not needed any more: status reads MONGODB_URL alone",
            file=sys.stderr,
        )

    async def run(admin: Admin) -> int:
        emit_json((await admin.status()).model_dump(mode="json"))
        return DONE

    return await with_admin(args, run)


async def health(args: argparse.Namespace) -> int:
    url = mongodb_url()
    db = open_database(url, args.timeout)
    try:
        result = await health_mod.check(
            db,
            collection_prefix=args.prefix,
            instance_id=args.instance_id,
            max_age=args.max_age,
            wait=args.timeout,
        )
    finally:
        await close_database(db)
    if args.json:
        emit_json(result.model_dump(mode="json"))
    else:
        print(("ok: " if result.ok else "unhealthy: ") + result.reason)
    return DONE if result.ok else NOTHING
