"""Why MongoDB cannot be reached, said plainly, and URLs printed without their password (no
server needed: the driver's last error)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import bson
import pytest

from job_processor.core.errors import DatabaseUnreachableError, InvalidArgumentError
from job_processor.storage.connect import (
    check_reachable,
    close_database,
    open_database,
    shown_url,
    why_unreachable,
)


def db_whose_driver_saw(error: Exception | None) -> Any:
    server = SimpleNamespace(error=error)
    topology = SimpleNamespace(server_descriptions=lambda: {("db.example", 27017): server})
    return SimpleNamespace(client=SimpleNamespace(topology_description=topology))


@pytest.mark.parametrize(
    ("driver_said", "we_say"),
    [
        (
            "db.example:27017: [Errno 111] Connect call failed ('10.0.0.1', 27017) "
            "(configured timeouts: socketTimeoutMS: 2000.0ms, connectTimeoutMS: 2000.0ms)",
            "connection refused: nothing listens on that port",
        ),
        (
            "db.example:27017: [Errno -2] Name or service not known (configured timeouts: x)",
            "host name not found",
        ),
        (
            "db.example:27017: Message length (1347703880) is larger than server max message "
            "size (48000000)",
            "what answers there is not MongoDB (an HTTP port?)",
        ),
        ("db.example:27017: TLS handshake failed", "TLS handshake failed"),
        (
            "db.example:27017: [Errno 104] Connection reset by peer",
            "connection reset by peer: it closed the connection at once: what answers there is "
            "not MongoDB (an HTTP port?), or it expects TLS (add tls=true to the URL)",
        ),
    ],
)
def test_the_drivers_last_error_is_said_plainly(driver_said: str, we_say: str) -> None:
    assert why_unreachable(db_whose_driver_saw(OSError(driver_said))) == we_say


def test_no_error_seen_yet_is_no_answer() -> None:
    assert why_unreachable(db_whose_driver_saw(None)) == "no answer"
    assert why_unreachable(object()) == "no answer"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://ada:pw@h:27017/db", "mongodb://ada:****@h:27017/db"),
        (
            "mongodb+srv://ada:p%40ss@cluster.x/db?tls=true",
            "mongodb+srv://ada:****@cluster.x/db?tls=true",
        ),
        ("mongodb://ada@h/db", "mongodb://ada@h/db"),
        ("mongodb://ada:p@ss@h/db", "mongodb://ada:****@h/db"),  # an unescaped @
        ("mongodb://ada:pa/ss@h/db", "mongodb://ada:****@h/db"),  # an unescaped /
        ("mongodb://ada:1234/secret@127.0.0.1", "mongodb://ada:****@127.0.0.1"),
        ("mongodb://ada:pa?ss@h/db", "mongodb://ada:****@h/db"),
        ("mongodb://ada:p=ss@h/db", "mongodb://ada:****@h/db"),
        ("mongodb://ada:pa?s&password=x@h/db", "mongodb://ada:****@h/db"),
        (
            "mongodb://ada:pw@h1:27017,h2:27017/db?replicaSet=rs0",
            "mongodb://ada:****@h1:27017,h2:27017/db?replicaSet=rs0",
        ),
        ("mongodb://h:27017/db?appName=ops@team", "mongodb://h:27017/db?appName=ops@team"),
        (
            "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0k",
            "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=****",
        ),
        (
            "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=k3y&appName=x",
            "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=****&appName=x",
        ),
        ("mongodb://h:27017/db", "mongodb://h:27017/db"),
    ],
)
def test_a_url_is_printed_without_its_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def unreachable_because(answer: Answer, options: str = "") -> str:
    """check_reachable's error against a local server whose connections `answer` serves
    (given the server's port); every connection is closed at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            await answer(reader, writer, port)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    db = open_database(f"mongodb://127.0.0.1:{port}/x{options}", 1.0)
    try:
        with pytest.raises(DatabaseUnreachableError) as err:
            await check_reachable(db, 1.0)
    finally:
        await close_database(db)
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    return str(err.value)


async def test_a_server_that_accepts_but_never_answers_is_not_called_an_outage() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        pass  # reads nothing, answers nothing: as an HTTP server waiting for a request line

    said = await unreachable_because(silent)
    assert "something listens there but does not answer as MongoDB does" in said


async def test_a_replica_set_without_a_primary_is_said_as_such() -> None:
    """A server that answers `hello` as a secondary of a set with no primary (an election, or
    a set not initiated): no primary, not 'another kind of server'."""

    async def secondary(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        me = f"127.0.0.1:{port}"
        hello = bson.encode(
            {
                "ok": 1.0,
                "isWritablePrimary": False,
                "secondary": True,
                "setName": "rs0",
                "hosts": [me],
                "me": me,
                "minWireVersion": 0,
                "maxWireVersion": 21,
            }
        )
        while True:  # every request gets the same hello reply, as OP_MSG or OP_REPLY
            length, request_id, _, opcode = struct.unpack("<iiii", await reader.readexactly(16))
            await reader.readexactly(length - 16)
            if opcode == 2004:  # OP_QUERY (the first handshake): OP_REPLY
                body, reply_op = struct.pack("<iqii", 0, 0, 0, 1) + hello, 1
            else:  # OP_MSG: flags, a section of kind 0
                body, reply_op = struct.pack("<I", 0) + b"\x00" + hello, 2013
            writer.write(struct.pack("<iiii", 16 + len(body), 1, request_id, reply_op) + body)
            await writer.drain()

    said = await unreachable_because(secondary, "?replicaSet=rs0")
    assert "(no primary: the servers answer, but none accepts writes" in said


async def test_a_driver_failure_on_login_is_one_line_naming_the_likely_cause() -> None:
    """The embedded server answers a SCRAM login with no payload: pymongo raises KeyError."""

    async def command(name: str) -> None:
        raise KeyError("payload")

    pool = SimpleNamespace(_credentials=object())  # the URL had user:password
    topology = SimpleNamespace(server_descriptions=lambda: {("127.0.0.1", 27017): None})
    client = SimpleNamespace(
        options=SimpleNamespace(pool_options=pool), topology_description=topology
    )
    db = SimpleNamespace(command=command, client=client)
    with pytest.raises(DatabaseUnreachableError) as err:
        await check_reachable(db, 1.0)
    assert str(err.value).startswith(
        "cannot reach MongoDB at 127.0.0.1:27017 (the connection failed: KeyError: 'payload', "
        "while logging in with the URL's user and password: does the server check them?"
    )


async def test_a_programming_error_is_not_called_an_outage() -> None:
    """Only a login the driver chokes on is turned into 'cannot reach': anything else (a
    client of another event loop, say) is raised as it is."""

    async def command(name: str) -> None:
        raise KeyError("a bug of the caller's")  # as the login's KeyError, with no login

    topology = SimpleNamespace(server_descriptions=lambda: {("127.0.0.1", 27017): None})
    pool = SimpleNamespace(_credentials=None)
    client = SimpleNamespace(
        options=SimpleNamespace(pool_options=pool), topology_description=topology
    )
    with pytest.raises(KeyError, match="a bug of the caller's"):
        await check_reachable(SimpleNamespace(command=command, client=client), 1.0)


def test_a_url_the_driver_cannot_read_is_bad_input_naming_mongodb_url() -> None:

    for url in ("http://127.0.0.1:27017/x", "mongodb://ada:pa/ss@h/db"):
        with pytest.raises(InvalidArgumentError, match="MONGODB_URL is not a MongoDB URL"):
            open_database(url, 1.0)


async def test_a_refused_connection_ends_a_commands_wait_at_once() -> None:
    """The CLI's commands (refused_is_final) say "connection refused" without waiting their
    whole timeout for a server to start; a service's startup (the default) keeps waiting."""
    with socket.socket() as s:  # a free port: nothing listens there once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = open_database(f"mongodb://127.0.0.1:{port}/x", 60.0)
    try:
        with pytest.raises(DatabaseUnreachableError) as err:
            async with asyncio.timeout(20):  # far below the 60 s wait it was given
                await check_reachable(db, 60.0, refused_is_final=True)
        assert str(err.value) == (
            f"cannot reach MongoDB at 127.0.0.1:{port} (connection refused: nothing listens "
            "on that port); check MONGODB_URL and that the server is running"
        )
        with pytest.raises(TimeoutError):  # the default: still waiting when cut off
            async with asyncio.timeout(0.3):
                await check_reachable(db, 60.0)
    finally:
        await close_database(db)


async def test_refused_is_said_at_once_only_when_every_address_refuses() -> None:
    """Every address of every seed (a name with an IPv4 and an IPv6 address, several hosts);
    a seed without a port (a mongodb+srv name before its lookup) or a name that does not
    resolve cannot be told refused: the command waits as before."""
    from job_processor.storage.connect import _all_refused

    closed = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed.append(s.getsockname()[1])
    a, b = closed
    for url in (f"mongodb://localhost:{a}/x", f"mongodb://127.0.0.1:{a},localhost:{b}/x"):
        db = open_database(url, 5.0)
        try:
            assert await _all_refused(db), url
        finally:
            await close_database(db)
    listening = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    db = open_database(f"mongodb://127.0.0.1:{a},127.0.0.1:{port}/x", 5.0)
    try:
        assert not await _all_refused(db)  # one of them listens
    finally:
        await close_database(db)
        listening.close()
        await listening.wait_closed()
    for seeds in ({("db.example.com", None): None}, {("no-such-host.invalid", a): None}):
        topology = SimpleNamespace(server_descriptions=lambda seeds=seeds: seeds)
        double = SimpleNamespace(client=SimpleNamespace(topology_description=topology))
        assert not await _all_refused(double)


MOTOR_GIVES_UP = """
import asyncio, logging, sys
from motor.motor_asyncio import AsyncIOMotorClient
from job_processor import DatabaseUnreachableError, init_job_processor

async def main() -> None:
    db = AsyncIOMotorClient(f"mongodb://127.0.0.1:{sys.argv[1]}/")["app"]  # 30 s selection
    try:
        await init_job_processor(db, logging.getLogger("t"), jobs={}, connect_timeout=0.5)
    except DatabaseUnreachableError as exc:
        print(exc)

asyncio.run(main())
"""


def test_with_motor_a_process_exiting_on_an_unreachable_database_ends_with_the_wait() -> None:
    """Motor pings on one of its threads; asyncio's timeout does not stop it, and the process
    would wait for it at exit for the driver's serverSelectionTimeoutMS (30 s by default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    done = subprocess.run(
        [sys.executable, "-c", MOTOR_GIVES_UP, str(port)],
        capture_output=True,
        text=True,
        timeout=20,  # 30 s and more before the fix; about 2 s (imports included) after it
    )
    assert f"cannot reach MongoDB at 127.0.0.1:{port} within 0.5s" in done.stdout, done.stderr
