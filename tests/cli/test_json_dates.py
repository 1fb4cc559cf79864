"""Every `--json` output writes its dates one way: UTC, ending in Z (as the models write
theirs: created_at, emitted_at, now...). Some came out as `...+00:00`: a job's history, the dates
inside a payload, a checkpoint or a result, an action's detail (a purge's ended_before, a
replay's window), health's last_seen, a webhook attempt's time. Webhook bodies keep theirs."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, WebhookOptions, init_job_processor
from job_processor.cli.parser import build_parser
from job_processor.core.definitions import Backoff
from job_processor.events.webhooks import generate_secret
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli
from tests.helpers import FAST, wait_status
from tests.receiver import Reply, receiving

AT = dt.datetime(2030, 1, 31, 9, 0, 0, 123000, tzinfo=dt.UTC)
LATER = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)

#: A text that is a date and time (ISO 8601), its zone in `zone`.
ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?P<zone>Z|[+-]\d\d:?\d\d)?")


async def cli(url: str, *args: str) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url})


async def stamped(job: Job, signal: AbortSignal) -> dict[str, Any]:
    """Dates in its checkpoint, a log line and its result; its first run fails (a history)."""
    await job.checkpoint({"seen": AT, "attempt": job.attempt})
    job.log("stamped", at=AT)
    if job.attempt == 1:
        raise RuntimeError("first run fails")
    return {"at": AT}


async def boom(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("smtp down")


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


def json_commands() -> set[tuple[str, ...]]:
    """The (sub)commands that take --json, read from the parser."""
    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif "--json" in action.option_strings:
                found.add(path)

    walk(build_parser(), ())
    return found


def dates_not_in_z(value: Any, where: str = "") -> list[str]:
    """Every text of a JSON value that is a date not written in UTC with a Z."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in dates_not_in_z(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in dates_not_in_z(v, f"{where}[{i}]")]
    if isinstance(value, str):
        found = ISO.fullmatch(value)
        if found and found["zone"] != "Z":
            return [f"{where}: {value}"]
    return []


async def test_every_json_output_writes_its_dates_in_utc_with_a_z(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    retried = Backoff(kind="fixed", base_seconds=0.2, jitter=False)
    with receiving() as receiver:
        processor = await init_job_processor(
            db,
            jobs={
                "stamped": JobDef(handler=stamped, max_attempts=2, backoff=retried),
                "boom": JobDef(handler=boom, max_attempts=1),
                "later": JobDef(handler=tick),
            },
            crons={"nightly": {"cron_string": "0 2 * * *", "handler": tick}},
            webhook_secrets={"crm": generate_secret()},
            webhook_options=WebhookOptions(backoff=retried),
            instance_id="json-dates",
            **FAST,
        )
        await processor.webhooks.add(
            url=receiver.script("/hook", Reply(503, body=b"busy"), Reply(200)),
            events=["shipped"],
            secret_ref="crm",
        )
        async with processor:
            job = await processor.schedule_job("stamped", {"due": AT})
            failed = await processor.schedule_job("boom", {})
            held = [await processor.schedule_job("later", {}, LATER) for _ in range(3)]
            event = await processor.emit("shipped", {"at": AT, "n": 1})
            await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
            await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]
            deadline = asyncio.get_running_loop().time() + 15
            while not all(
                d.status == "finished" for d in (await processor.get_event(event.id)).deliveries
            ):
                assert asyncio.get_running_loop().time() < deadline, "the webhook did not end"
                await asyncio.sleep(0.05)
            (delivery,) = (await processor.get_event(event.id)).deliveries
            assert delivery.job_id is not None and len(delivery.attempts) == 2
            assert len((await processor.get_job(job.id)).history) == 2

            # what receivers get is unchanged: the payload's dates as Python writes them
            bodies = [json.loads(r.body) for r in receiver.requests]
            assert [b["data"] for b in bodies] == [
                {"at": "2030-01-31T09:00:00.123000+00:00", "n": 1}
            ] * 2
            assert {b["timestamp"][-1] for b in bodies} == {"Z"}

            # the attempts an older version recorded: their times as text, "+00:00"
            jobs = db["job_processor_jobs"]
            stored = await jobs.find_one({"_id": ObjectId(delivery.job_id)})
            assert stored is not None and stored["output"]["result"]["at"].endswith("Z")
            (attempt,) = stored["state"]["attempts"]
            older = {
                "state.attempts": [attempt | {"at": "2030-01-31T09:00:00.123000+00:00"}],
                "output.result.at": "2030-01-31T09:00:01.456000+00:00",
            }
            await jobs.update_one({"_id": stored["_id"]}, {"$set": older})
            shown = json.loads((await cli(url, "events", "show", event.id, "--json")).stdout)
            (webhook,) = shown["deliveries"]
            assert [a["at"] for a in webhook["attempts"]] == [
                "2030-01-31T09:00:00.123000Z",
                "2030-01-31T09:00:01.456000Z",
            ]
            assert webhook["result"]["at"] == "2030-01-31T09:00:01.456000Z"

            since = (event.emitted_at - dt.timedelta(minutes=1)).isoformat()
            runs: dict[tuple[str, ...], list[list[str]]] = {
                ("status",): [[]],
                ("health",): [["--instance-id", "json-dates"]],
                ("workers", "list"): [[]],
                ("names", "list"): [[]],
                ("crons", "list"): [[]],
                ("jobs", "list"): [[]],
                ("jobs", "show"): [[job.id, "--logs"], [delivery.job_id]],
                ("events", "list"): [[]],
                ("events", "show"): [[event.id]],
                ("webhooks", "list"): [[]],
                ("names", "pause"): [["later"]],
                ("names", "resume"): [["later"]],
                ("jobs", "run-now"): [[held[0].id]],
                ("jobs", "retry"): [[failed.id], ["--name", "boom", "--status", "errored"]],
                ("jobs", "kill"): [[held[1].id]],
                ("kill",): [[held[2].id]],
                ("jobs", "delete"): [[held[1].id]],
                ("jobs", "purge"): [["--status", "killed", "--older-than", "1d"]],
                ("jobs", "new"): [["later", "--at", "2099-01-01T00:00:00Z"]],
                ("jobs", "duplicate"): [[job.id]],
                ("crons", "trigger"): [["nightly"]],
                ("crons", "remove"): [["nightly"]],
                ("names", "forget"): [["later"]],
                ("events", "replay"): [[event.id], ["--name", "shipped", "--since", since]],
            }
            assert set(runs) == json_commands()  # a command given --json since: add it here
            wrong: dict[str, list[str]] = {}
            for command, forms in runs.items():
                for form in forms:
                    argv = [*command, *form, "--json"]
                    done = await cli(url, *argv)
                    said = f"{' '.join(argv)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
                    assert done.returncode in (0, 1), said
                    found = dates_not_in_z(json.loads(done.stdout))
                    if found or "+00:00" in done.stdout:
                        wrong[" ".join(argv)] = found or [done.stdout]
            assert wrong == {}
