"""Chaos: worker processes SIGKILLed or SIGTERMed every few seconds while thousands of jobs run;
then check that nothing was lost.

To run:
    .venv/bin/python benchmarks/chaos.py                  # 2000 jobs, 4 workers, a throwaway server
    .venv/bin/python benchmarks/chaos.py --jobs 300 --every 1.5
    MONGODB_URL=mongodb://localhost:27017/chaos?replicaSet=rs0 .venv/bin/python benchmarks/chaos.py

The jobs (benchmarks/chaos_app.py): plain ones (some fail and are retried), resumable ones that
checkpoint, all with an on_job_exited hook that records each call in a collection. A supervisor
keeps N `job-processor run` processes alive and, every `--every` seconds, kills a random one
(SIGKILL or SIGTERM, half and half) and starts a replacement. At the end it waits for the
recovery to settle and prints, then checks:

- every job ended (finished, or errored after its attempts), none left running or pending;
- every ended job's on_job_exited is recorded as done, and was called at least once;
- how many hooks were called twice (allowed: a process died while running the hook) and how many
  jobs ran more than once (allowed: at least once, a crash counts as an attempt).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import server

from job_processor.storage.connect import shown_url

ROOT = Path(__file__).resolve().parents[1]


def url_with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{name}" + (f"?{query}" if query else "")


def spawn(
    url: str,
    index: int,
    log_dir: Path,
    app: str = "chaos_app:make",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = os.environ | (env or {}) | {"MONGODB_URL": url, "INSTANCE_ID": f"chaos-{index}"}
    log = (log_dir / f"worker-{index}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "job_processor", "run", app],
        cwd=Path(__file__).resolve().parent,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@dataclasses.dataclass(frozen=True)
class Kill:
    pid: int
    how: str
    at: float
    """time.time() once the process had exited."""


class Supervisor:
    """Keeps `workers` `job-processor run <app>` processes alive; `kill_one` kills a random one
    (SIGKILL or SIGTERM, half and half), waits for it to exit and starts a replacement."""

    def __init__(
        self,
        url: str,
        log_dir: Path,
        app: str = "chaos_app:make",
        env: dict[str, str] | None = None,
        rng: random.Random | None = None,
        sigkill_share: float = 0.5,
    ) -> None:
        self.url, self.log_dir, self.app, self.env = url, log_dir, app, env
        self.rng = rng or random.Random(7)
        self.sigkill_share = sigkill_share
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kills: collections.Counter[str] = collections.Counter()
        self.next_index = 0

    def start(self, workers: int) -> None:
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        self.procs[self.next_index] = spawn(
            self.url, self.next_index, self.log_dir, self.app, self.env
        )
        self.next_index += 1

    def kill_one(self, pid: int | None = None) -> Kill | None:
        """Kill a random process (or the one with this pid: None if it is not one of ours)."""
        if pid is None:
            victim = self.rng.choice(list(self.procs))
        else:
            victim = next((i for i, p in self.procs.items() if p.pid == pid), -1)
            if victim < 0:
                return None
        proc = self.procs.pop(victim)
        how = signal.SIGKILL if self.rng.random() < self.sigkill_share else signal.SIGTERM
        proc.send_signal(how)
        self.kills[how.name] += 1
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        at = time.time()
        self._spawn()
        return Kill(proc.pid, how.name, at)

    def stop_all(self) -> list[int]:
        """SIGTERM every process and wait for it (SIGKILL after 15 s); returns their pids."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pids = [p.pid for p in self.procs.values()]
        self.procs.clear()
        return pids


async def run(
    url: str, db_name: str, log_dir: Path, jobs: int, workers: int, every: float, limit: float
) -> int:
    from chaos_app import schedule_all

    db_url = url_with_db(url, db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    db = client[db_name]
    sup = Supervisor(db_url, log_dir)
    kills = sup.kills
    try:
        await schedule_all(db, jobs)
        sup.start(workers)
        t0 = time.monotonic()
        jobs_coll = db["job_processor_jobs"]
        while time.monotonic() - t0 < limit:
            await asyncio.sleep(every)
            active = await jobs_coll.count_documents(
                {"status": {"$in": ["pending", "running", "paused"]}}
            )
            if not active:
                break
            sup.kill_one()
        # let the recovery settle: dead workers' jobs and owed hooks are taken over
        settle = time.monotonic() + 60
        while time.monotonic() < settle:
            open_jobs = await jobs_coll.count_documents(
                {"status": {"$in": ["pending", "running", "paused"]}}
            )
            owed = await jobs_coll.count_documents({"exit_hook": "owed"})
            if not open_jobs and not owed:
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
        by_status = collections.Counter(
            [d["status"] async for d in jobs_coll.find({}, {"status": 1})]
        )
        hooks = collections.Counter(
            [d.get("exit_hook") async for d in jobs_coll.find({}, {"exit_hook": 1})]
        )
        calls = collections.Counter(
            [d["job_id"] async for d in db["chaos_hook_calls"].find({}, {"job_id": 1})]
        )
        ids = [str(d["_id"]) async for d in jobs_coll.find({}, {"_id": 1})]
        never = [i for i in ids if calls[i] == 0]
        twice = sum(1 for i in ids if calls[i] > 1)
        reruns = await jobs_coll.count_documents({"attempt": {"$gt": 1}})
        print(f"server: {shown_url(url)}  database: {db_name}  logs: {log_dir}")
        print(
            f"{jobs} jobs, {workers} worker processes, a kill every {every:g} s: "
            f"{kills['SIGKILL']} SIGKILL, {kills['SIGTERM']} SIGTERM, {elapsed:.1f} s"
        )
        print(f"job statuses: {dict(by_status)}")
        print(f"on_job_exited records: {dict(hooks)}")
        print(
            f"hooks never called: {len(never)}; called twice (a process died while running "
            f"it, at least once): {twice}; jobs run more than once: {reruns}"
        )
        failures = []
        if by_status.get("pending") or by_status.get("running") or by_status.get("paused"):
            failures.append("jobs left active")
        if hooks.get("owed"):
            failures.append("hooks still owed")
        if never:
            failures.append(f"{len(never)} jobs whose hook never ran")
        print("CHECKS: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
        return 1 if failures else 0
    finally:
        sup.stop_all()
        await client.drop_database(db_name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    db_name = f"jp_chaos_{uuid.uuid4().hex[:8]}"
    log_dir = Path(f"/tmp/{db_name}")
    log_dir.mkdir(parents=True, exist_ok=True)
    with server(os.environ.get("MONGODB_URL")) as url:
        code = asyncio.run(
            run(url, db_name, log_dir, args.jobs, args.workers, args.every, args.timeout)
        )
    raise SystemExit(code)


if __name__ == "__main__":
    main()
