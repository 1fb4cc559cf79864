"""`job-processor server`: a persistent local server for development, as a user runs it (a real
process; Ctrl-C and SIGTERM stop it cleanly, and its data is there again at the next start)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from job_processor.cli.server import cmd_server
from job_processor.demo import run_demo
from job_processor.storage.local_server import cap_log, free_port, start_local_server

ROOT = Path(__file__).resolve().parents[2]
SERVER = [sys.executable, "-m", "job_processor", "server"]


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*SERVER, "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("export MONGODB_URL="):
            return proc, line.strip().removeprefix("export MONGODB_URL=")
    proc.kill()
    raise AssertionError("no MONGODB_URL printed:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    return out


def test_it_keeps_its_data_prints_the_url_and_stops_on_ctrl_c_or_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc, url = start(data, port)
    assert url == f"mongodb://127.0.0.1:{port}/job_processor"  # the default database
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        client.get_default_database()["notes"].insert_one({"_id": 1, "text": "kept"})
    assert "stopped" in stop(proc, signal.SIGINT)  # Ctrl-C
    with MongoClient(url, serverSelectionTimeoutMS=300) as gone:  # the server stopped with it
        try:
            gone.admin.command("ping")
            raise AssertionError("the server still answers after Ctrl-C")
        except Exception as exc:
            assert "Timeout" in type(exc).__name__ or "refused" in str(exc).lower()

    # a pid file left by a server that was SIGKILLed, whose pid is in use again: no matter
    (data / f"server-{port}.pid").write_text(f"{os.getpid()}\n")
    proc, url = start(data, port)  # its data is there again
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        assert client.get_default_database()["notes"].find_one({"_id": 1}) == {
            "_id": 1,
            "text": "kept",
        }
    stop(proc, signal.SIGTERM)


def refused_start(
    data: Path, port: int, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`job-processor server` on a port or a data folder it cannot take: it exits at once,
    saying why."""
    return subprocess.run(
        [*SERVER, "--data-dir", str(data), "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_a_port_in_use_says_what_to_do(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = start(tmp_path / "a", port)
    try:
        second = refused_start(tmp_path / "b", port)
        assert second.returncode == 2
        assert second.stdout.startswith(
            f"error: a MongoDB server already listens on 127.0.0.1:{port}: use it "
            f"(MONGODB_URL=mongodb://127.0.0.1:{port}/job_processor), or pick another port: "
        )
        said = re.search(r"job-processor server --port (\d+) \(free now\)", second.stdout)
        assert said is not None and int(said[1]) > port, second.stdout
    finally:
        stop(proc, signal.SIGTERM)
    with socket.socket() as other:  # a program that is not MongoDB (the dashboard, say)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        third = refused_start(tmp_path / "c", port)
    assert third.returncode == 2
    assert third.stdout.startswith(
        f"error: 127.0.0.1:{port} is already in use by another program (no MongoDB answers there): "
        "pick another port: job-processor server --port "
    )
    assert "MONGODB_URL" not in third.stdout


def test_a_data_folder_in_use_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, _ = start(data, free_port())
    try:
        second = refused_start(data, free_port())
        assert second.returncode == 2
        assert f"{data} is in use by another job-processor server (pid {proc.pid}" in second.stdout
        assert "--data-dir" in second.stdout
    finally:
        stop(proc, signal.SIGTERM)


async def test_without_the_demo_extra_it_says_which_one_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """nx-27017 not installed: one line naming the extra, exit 2 (a missing extra, as for the
    dashboard), before anything is created or announced."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # nothing beside it
    monkeypatch.setattr(shutil, "which", lambda name: None)
    data = tmp_path / "data"
    args = argparse.Namespace(port=free_port(), data_dir=str(data))
    assert await cmd_server(args) == 2
    said = "error: nx-27017 (the local server) is not installed: pip install 'job-processor[demo]'"
    assert capsys.readouterr().out == said + "\n"
    assert not data.exists()
    assert await run_demo(None) == 2
    out, err = capsys.readouterr()
    assert "starting a throwaway local server" not in out
    assert err.strip().endswith(
        "not installed: pip install 'job-processor[demo]' (or set MONGODB_URL to a MongoDB server)"
    )


def test_a_log_past_its_limit_moves_to_dot_1_and_its_writer_goes_on_at_the_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    with open(log, "a", encoding="utf-8") as writer:  # as nx-27017's own FileHandler
        writer.write("old line\n" * 200)
        writer.flush()
        assert not cap_log(log, limit=10_000)  # under the limit: left alone
        assert cap_log(log, limit=1_000)
        writer.write("new line\n")
        writer.flush()
    assert log.read_text(encoding="utf-8") == "new line\n"  # no hole of NUL bytes before it
    assert (tmp_path / "server.log.1").read_text(encoding="utf-8") == "old line\n" * 200
    assert not cap_log(tmp_path / "gone.log", limit=0)  # a missing log is no error


def test_the_servers_logs_are_capped_while_it_runs(tmp_path: Path) -> None:
    """Both files nx-27017 writes (its log, and its standard error, which repeats it) are open in
    append mode, so emptying them while it serves leaves no hole; it serves on."""
    server = start_local_server(tmp_path)
    try:
        for path in server.logs:
            assert path.exists()
        fds = Path(f"/proc/{server.process.pid}/fd")
        flags = {}
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):  # a socket closed meanwhile
                info = (fds.parent / "fdinfo" / fd).read_text()
                flags[os.readlink(fds / fd)] = int(info.split("flags:")[1].split()[0], 8)
        for path in server.logs:
            assert flags[str(path)] & os.O_APPEND, path
        with MongoClient(server.url, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
        written = [path for path in server.logs if path.stat().st_size > 0]
        assert written  # it says it started and listens, in both
        server.cap_logs(limit=0)
        with MongoClient(server.url, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
        for path in server.logs:
            assert b"\0" not in path.read_bytes()
        for path in written:
            assert path.with_name(path.name + ".1").stat().st_size > 0
    finally:
        server.stop()


def test_a_repeated_sigterm_stops_it_and_its_server_cleanly(tmp_path: Path) -> None:
    """docs/operations.md: it "stops cleanly on Ctrl-C or SIGTERM". A SIGTERM repeated while it
    stopped killed it by the signal (-15), and could leave nx-27017 running, orphaned, on the
    port and the data folder, whose lock died with its holder."""
    port = free_port()
    data = tmp_path / "data"
    proc, _ = start(data, port)
    child = int((data / f"server-{port}.pid").read_text().split()[0])
    try:
        while proc.poll() is None:  # SIGTERM every millisecond until it has exited
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.001)
        proc.communicate(timeout=20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the server it started goes with it
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"nx-27017 (pid {child}) still runs on port {port}, orphaned")
        assert proc.returncode == 0, proc.returncode
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _orphan_pids(data: Path) -> list[int]:
    """The nx-27017 processes still alive that a server on `data` started (their pid files)."""
    pids = []
    for pid_file in data.glob("server-*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            pids.append(pid)
    return pids


def _answers(port: int) -> bool:
    with MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=300
    ) as client:
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False


def test_closing_its_terminal_sighup_stops_its_server_too(tmp_path: Path) -> None:
    """A terminal closed (SIGHUP) ends `job-processor server`: its nx-27017, in a session of
    its own, got no SIGHUP and stayed behind serving the data folder, orphaned."""
    data = tmp_path / "data"
    port = free_port()
    proc, _ = start(data, port)
    try:
        proc.send_signal(signal.SIGHUP)
        proc.communicate(timeout=20)
        assert proc.returncode == 0, proc.returncode
        assert not _answers(port) and not _orphan_pids(data), _orphan_pids(data)
    finally:
        for pid in _orphan_pids(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_data_folder_still_served_by_an_orphaned_server_is_refused(tmp_path: Path) -> None:
    """`job-processor server` killed (SIGKILL, the OOM killer) while its nx-27017 goes on: the
    server holds the data folder's lock too, so a second server on it is still refused."""
    data = tmp_path / "data"
    port = free_port()
    proc, _ = start(data, port)
    try:
        proc.kill()
        proc.communicate(timeout=20)
        assert _answers(port) and _orphan_pids(data)  # it goes on, orphaned
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        second = refused_start(data, free_port(), timeout=60, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "is in use by another job-processor server" in second.stdout, second.stdout
        named = re.search(r"nx-27017 pid (\d+)", second.stdout)  # the one to stop, alive
        assert named and int(named.group(1)) in _orphan_pids(data), second.stdout
    finally:
        for pid in _orphan_pids(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
