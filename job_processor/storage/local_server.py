"""A throwaway local MongoDB-compatible server (nx-27017) for the demo and the tests.

nx-27017 speaks MongoDB's wire protocol over SQLite (PyPI: `pip install job-processor[demo]`).
It is a stand-in for trying things out, never for production: see docs/testing.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError


class LocalServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bound_socket(host: str, port: int, resolve: bool = False) -> socket.socket:
    """A TCP socket bound to host:port as uvicorn binds one: IPv6 for a host with a colon
    (brackets allowed), else IPv4; with `resolve`, as the standard library's servers bind one:
    the first address getaddrinfo gives (socket.gaierror when the host has none). OSError when
    it cannot be."""
    if resolve:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = (host.strip("[]"), port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def free_port_near(host: str, port: int, tries: int = 20, resolve: bool = False) -> int | None:
    """The first port after `port` that `host` can bind now (None when none of `tries` can);
    `resolve` as for bound_socket."""
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        try:
            bound_socket(host, candidate, resolve).close()
        except OSError:
            continue
        return candidate
    return None


class LocalServerMissing(LocalServerError):
    """nx-27017 is not installed (the `demo` extra): a missing extra, as for the dashboard."""


def _executable() -> str:
    beside = Path(sys.executable).parent / "nx-27017"
    found = str(beside) if beside.exists() else shutil.which("nx-27017")
    if not found:
        raise LocalServerMissing(
            "nx-27017 (the local server) is not installed: pip install 'job-processor[demo]'"
        )
    return found


def check_installed() -> None:
    """LocalServerMissing, said before anything else, when nx-27017 is not installed."""
    _executable()


#: A log of the local server past this size is moved to `<its name>.1` (replacing the one
#: before), so a development server that runs for weeks keeps at most twice this per log.
LOG_LIMIT = 8 * 1024 * 1024


def cap_log(path: Path, limit: int = LOG_LIMIT) -> bool:
    """Copy a log past `limit` bytes to `<name>.1` and empty it (logrotate's copytruncate: its
    writer keeps its file open, in append mode, so it goes on at the start). A line written
    between the copy and the truncation is lost: a development log. True when it was moved."""
    try:
        if path.stat().st_size <= limit:
            return False
        shutil.copyfile(path, path.with_name(path.name + ".1"))
        os.truncate(path, 0)
    except OSError:  # removed meanwhile, or a full disk: tried again later
        return False
    return True


class LocalServer:
    def __init__(self, data_dir: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process = process
        self.url = f"mongodb://127.0.0.1:{port}/"

    @property
    def logs(self) -> list[Path]:
        """Its log, and its standard error (which repeats the log's lines)."""
        return list(log_paths(self.data_dir, self.port))

    def cap_logs(self, limit: int = LOG_LIMIT) -> None:
        for path in self.logs:
            cap_log(path, limit)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def speaks_mongodb(port: int, wait: float = 1.0) -> bool:
    """Whether what listens on 127.0.0.1:`port` answers a MongoDB ping, without TLS, within
    `wait` seconds: a started server is up; `job-processor server` on a port in use."""
    ms = int(wait * 1000)
    client: MongoClient[dict[str, object]] = MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true",
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=ms,
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def start_local_server(
    data_dir: Path | None = None,
    timeout: float = 20.0,
    port: int | None = None,
    keep_fds: tuple[int, ...] = (),
) -> LocalServer:
    """Start nx-27017 on a free port (or `port`, to restart a stopped one on its data) and wait
    until it answers ping. Raises LocalServerError (with the server's log) when it cannot start:
    callers must fail loudly, never skip. `keep_fds`: open files the server holds too (a data
    folder's lock: held while it lives, whatever becomes of its parent)."""
    exe = _executable()
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="job-processor-nx-"))
    last_log = ""
    fixed = port
    for _ in range(5):  # a port taken between free_port() and bind: pick another
        port = fixed or free_port()
        log_file, err_file = log_paths(data_dir, port)
        pid_file = data_dir / f"server-{port}.pid"
        # left by a server that was killed (SIGKILL): nx-27017 refuses to start while the pid
        # in it is alive, and a pid is soon reused; nothing listens on this port now
        pid_file.unlink(missing_ok=True)
        err_file.write_bytes(b"")
        # what nx-27017 says before its log is open (and then every line again); in append
        # mode, so that `cap_log` can empty it while the server writes
        with open(err_file, "ab") as err:
            proc = subprocess.Popen(
                [
                    exe,
                    "--data-dir",
                    str(data_dir),
                    "-p",
                    str(port),
                    "--log-file",
                    str(log_file),
                    "--pid-file",
                    str(pid_file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                pass_fds=keep_fds,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if speaks_mongodb(port, 0.3):
                return LocalServer(data_dir, port, proc)
            time.sleep(0.1)
        last_log = _tail(log_file, err_file)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "Errno 98" not in last_log or fixed:
            break
    raise LocalServerError(f"nx-27017 did not start on 127.0.0.1:{port}. Its log:\n{last_log}")


def log_paths(data_dir: Path, port: int) -> tuple[Path, Path]:
    """The log nx-27017 writes on this port, and its standard error."""
    return data_dir / f"server-{port}.log", data_dir / f"server-{port}.stderr"


def _tail(*files: Path, size: int = 2000) -> str:
    """The end of what these files hold together (a missing one holds nothing)."""
    text = ""
    for f in files:
        with contextlib.suppress(OSError):
            text += f.read_text(errors="replace")
    return text[-size:]


@contextlib.contextmanager
def local_server() -> Iterator[LocalServer]:
    tmp = Path(tempfile.mkdtemp(prefix="job-processor-nx-"))
    server = start_local_server(tmp)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
