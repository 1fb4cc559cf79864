"""`job-processor server`: a local MongoDB-compatible server for development, that keeps its data.

It starts the embedded server (nx-27017: MongoDB's wire protocol over SQLite, from the `demo`
extra) on 127.0.0.1, keeping its data in a folder of the user's (default: `DEFAULT_DATA_DIR`),
prints the `MONGODB_URL` to give `job-processor run`, `dashboard` and every other command, and
stops it cleanly on Ctrl-C or SIGTERM. For development only: production runs on MongoDB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import TextIO

from ..engine.signals import STOP_OR_HANGUP, stop_on_signals
from ..storage.connect import DEFAULT_DATABASE
from ..storage.local_server import (
    LocalServer,
    LocalServerError,
    LocalServerMissing,
    check_installed,
    free_port_near,
    speaks_mongodb,
    start_local_server,
)
from .common import UsageError

#: The default port: MongoDB's.
DEFAULT_PORT = 27017

#: Held (flock) while a server uses the data folder: a second server on it is refused.
LOCK_FILE = "job-processor-server.lock"


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/job-processor/server, else ~/.local/share/job-processor/server."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "job-processor" / "server"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def prepared_data_dir(given: str | None) -> Path:
    data_dir = Path(given).expanduser() if given else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, a folder that cannot be made
        raise UsageError(
            f"--data-dir {data_dir}: {exc.strerror or exc}: give a folder you can write to"
        ) from None
    return data_dir


async def cmd_server(args: argparse.Namespace) -> int:
    port = int(args.port)
    if not 1 <= port <= 65535:
        print(f"error: --port {port}: a port is a number from 1 to 65535", flush=True)
        return 2
    if port_in_use(port):
        free = free_port_near("127.0.0.1", port)
        other = f"job-processor server --port {free} (free now)" if free else "another --port"
        if await asyncio.to_thread(speaks_mongodb, port):
            said = (
                f"a MongoDB server already listens on 127.0.0.1:{port}: use it "
                f"(MONGODB_URL=mongodb://127.0.0.1:{port}/{DEFAULT_DATABASE}), or pick another "
                f"port: {other}"
            )
        else:
            said = (
                f"127.0.0.1:{port} is already in use by another program (no MongoDB answers "
                f"there): pick another port: {other}"
            )
        print(f"error: {said}", flush=True)
        return 2
    try:
        check_installed()
    except LocalServerMissing as exc:
        print(f"error: {exc}", flush=True)
        return 2
    data_dir = await asyncio.to_thread(prepared_data_dir, args.data_dir)
    try:
        lock = await asyncio.to_thread(lock_data_dir, data_dir, port)
    except DataDirInUse as exc:
        print(f"error: {exc}", flush=True)
        return 2
    with lock:  # held until this server has stopped (and by the server: see _run)
        return await _run(data_dir, port, lock)


class DataDirInUse(Exception):
    pass


def lock_data_dir(data_dir: Path, port: int) -> TextIO:
    """Hold the data folder's lock file (flock: released if this process dies), or raise
    DataDirInUse naming the server that holds it."""
    lock = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open while serving
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise DataDirInUse(
            f"{data_dir} is in use by another job-processor server ({owner}); two servers on "
            "one data folder would corrupt it: use that server, or give this one its own "
            "folder with --data-dir (a job-processor server that was killed leaves its "
            "nx-27017 serving the folder: stop it with kill and the nx-27017 pid named)"
        ) from None
    _holder(lock, f"pid {os.getpid()}, port {port}")
    return lock


def _holder(lock: TextIO, who: str) -> None:
    """What a refused server says holds the folder (the lock file's one line)."""
    lock.seek(0)
    lock.truncate()
    lock.write(who + "\n")
    lock.flush()


async def _run(data_dir: Path, port: int, lock: TextIO) -> int:
    stop = asyncio.Event()
    # from the start: a SIGTERM while the server starts, or repeated while it stops, or its
    # terminal closed (SIGHUP), is no kill by the signal that leaves it running (a session of
    # its own), orphaned. nx-27017 holds the data folder's lock too (the same open file):
    # this process killed (SIGKILL), the folder stays locked while the server serves it.
    with stop_on_signals(stop, STOP_OR_HANGUP, ignore_after=True):
        try:
            server = await asyncio.to_thread(
                start_local_server, data_dir, 20.0, port, (lock.fileno(),)
            )
        except LocalServerError as exc:
            print(f"error: {exc}", flush=True)
            return 1
        _holder(lock, f"pid {os.getpid()}, nx-27017 pid {server.process.pid}, port {server.port}")
        return await _announced(server, data_dir, port, stop)


async def _announced(server: LocalServer, data_dir: Path, port: int, stop: asyncio.Event) -> int:
    url = f"mongodb://127.0.0.1:{port}/{DEFAULT_DATABASE}"
    print(
        f"job-processor server: nx-27017 (MongoDB's wire protocol over SQLite, for development "
        f"only) on 127.0.0.1:{port}, data in {data_dir}\n"
        f"export MONGODB_URL={url}\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        died = await _serve(server, stop)
    finally:
        await asyncio.to_thread(server.stop)
    if died:
        print(f"error: the server stopped by itself (exit code {died}); its log is in {data_dir}")
        return 1
    print("job-processor server: stopped", flush=True)
    return 0


async def _serve(server: LocalServer, stop: asyncio.Event) -> int | None:
    """Until Ctrl-C / SIGTERM; the server's exit code if it stopped by itself first. Its logs
    are kept under `LOG_LIMIT` each meanwhile (the previous part in `<log>.1`)."""
    while not stop.is_set():
        code = server.process.poll()
        if code is not None:
            return code
        await asyncio.to_thread(server.cap_logs)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return None
