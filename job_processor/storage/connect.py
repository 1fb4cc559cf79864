"""Connecting: refusing what is not an async database, checking that MongoDB answers, and
opening the database a `MONGODB_URL` names (the CLI, the dashboard, the demo).

A URL without a database name means `DEFAULT_DATABASE` everywhere ("job_processor").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import urllib.parse
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, MongoClient, ReadPreference
from pymongo.common import URI_OPTIONS_ALIAS_MAP, URI_OPTIONS_VALIDATOR_MAP
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.server_type import SERVER_TYPE
from pymongo.uri_parser import split_options

from ..core.errors import (
    DatabaseUnreachableError,
    InvalidArgumentError,
    InvalidDatabaseError,
    did_you_mean,
)
from .driver_fixes import fix_cancelled_waits
from .sync_adapter import is_sync
from .transient import COMMAND_BOUND

#: The database a MONGODB_URL without one names, for every command and example.
DEFAULT_DATABASE = "job_processor"
URL_ENV = "MONGODB_URL"
#: What every command says when MONGODB_URL is not set.
MISSING_URL = (
    f"set MONGODB_URL, e.g. mongodb://127.0.0.1:27017/{DEFAULT_DATABASE} (no MongoDB? "
    "`job-processor server` starts a local one for development and prints the URL)"
)


#: Collection types (pymongo sync and async, motor, mongomock-motor): a common slip for a database.
_COLLECTIONS = {
    "Collection",
    "AsyncCollection",
    "AsyncIOMotorCollection",
    "AsyncMongoMockCollection",
}


def check_database(db: Any) -> None:
    """Refuse sync databases and clients with a message that says what to pass instead."""
    if is_sync(db):  # a synchronous database behind the async interface (JobClient)
        return
    if isinstance(db, Database):
        raise InvalidDatabaseError(
            "db is a synchronous pymongo Database; pass an async one: "
            "pymongo.AsyncMongoClient(url)['mydb'] (or motor's AsyncIOMotorClient(url)['mydb'])"
        )
    if isinstance(db, MongoClient) or type(db).__name__ in {
        "AsyncMongoClient",
        "AsyncIOMotorClient",
        "AsyncMongoMockClient",
    }:
        raise InvalidDatabaseError(
            "db is a client, not a database: pass client['mydb'] (or "
            "client.get_default_database('job_processor'): its URL's database, that one when "
            "the URL names none)"
        )
    if type(db).__name__ in _COLLECTIONS:  # its attributes are sub-collections: check it first
        database = str(getattr(getattr(db, "database", None), "name", "mydb"))
        raise InvalidDatabaseError(
            f"db is a collection ({getattr(db, 'full_name', '?')!r}), not a database: pass the "
            f"database, client[{database!r}] (job-processor keeps its own collections there, "
            "job_processor_jobs and the others)"
        )
    if type(db).__module__.startswith("mongomock.") or not hasattr(db, "get_collection"):
        raise InvalidDatabaseError(
            f"db must be an async MongoDB database (pymongo AsyncDatabase or motor "
            f"AsyncIOMotorDatabase), got {type(db).__name__}"
        )


def shown_url(url: str) -> str:
    """A MongoDB URL to print: its password, and the value of any query option that may hold a
    secret (a password, a token, authMechanismProperties), replaced by ****. The login ends at
    the last "@" that is not in an option's value, so that a password holding an unescaped "/",
    "?" or "@" never shows (the driver may read such a URL otherwise: better masked twice)."""
    scheme, sep, rest = url.partition("://")
    ats = [i for i, c in enumerate(rest) if c == "@" and not _in_option(rest, i)]
    if sep and ats:
        login, hosts = rest[: ats[-1]], rest[ats[-1] + 1 :]
        user, colon, _ = login.partition(":")
        rest = f"{user}{colon}{'****' if colon else ''}@{hosts}"
    shown = f"{scheme}{sep}{rest}"
    secret = r"[^=&]*(?:password|secret|token|authmechanismproperties)[^=&]*"
    return re.sub(rf"(?i)([?&]{secret}=)[^&]*", r"\1****", shown)


def _in_option(rest: str, at: int) -> bool:
    """Whether the "@" at `at` is in an option's value (`/db?appName=ops@team`): after a "?"
    that follows the path's "/", and an "=" (a password may hold "?" and "=" too)."""
    question = rest.find("?")
    return 0 <= question < at and "/" in rest[:question] and "=" in rest[question:at]


def address(db: Any) -> str:
    """host:port of the database's client, for error messages (never the credentials)."""
    with contextlib.suppress(Exception):
        seeds = db.client.topology_description.server_descriptions() or _seeds(db.client)
        if seeds:
            return ", ".join(h if p is None else f"{h}:{p}" for h, p in sorted(seeds, key=str))
    return "the configured address"


def _seeds(client: Any) -> Any:
    """The hosts the URL names (PyMongo drops a server that is not a member of the replica set
    the URL names from the servers it describes)."""
    if type(client).__module__.startswith("motor"):  # Motor wraps PyMongo's client
        client = client.delegate
    return getattr(client, "_seeds", None)  # a client's other attributes are databases


def _not_in_set(db: Any) -> str | None:
    """Why nothing answers when the URL names a replica set the server is not in: PyMongo
    dropped every server it found (a typo in `replicaSet=`, or a standalone server)."""
    with contextlib.suppress(Exception):
        name = db.client.options.replica_set_name
        if name and not db.client.topology_description.server_descriptions():
            return (
                f"the server answers but is not a member of replica set {name!r}: check "
                "replicaSet= in MONGODB_URL, or leave it out for a standalone server"
            )
    return None


async def check_reachable(db: Any, wait: float, *, refused_is_final: bool = False) -> None:
    """Ping MongoDB; a clear error within `wait` seconds instead of a long traceback.

    `refused_is_final` (the CLI's commands): when every address refuses the connection, say so
    at once instead of waiting `wait` for a server to start listening. A service waits: its
    MongoDB may be starting beside it."""
    if type(db).__module__.startswith("mongomock_motor"):
        return
    fix_cancelled_waits()  # its timeout may cancel a ping waiting for a server: driver_fixes
    try:
        if is_sync(db):  # no event loop: the driver's own client-side timeout
            with pymongo.timeout(min(wait, COMMAND_BOUND)):
                await db.command("ping")
        else:
            # Motor pings on one of its threads, which asyncio's timeout cannot stop: the
            # driver's client-side timeout (a context variable Motor copies into the thread) ends
            # it with the wait, or a process exiting on the error would wait for the thread
            # (serverSelectionTimeoutMS, 30 s by default)
            bounded = (
                pymongo.timeout(min(wait, COMMAND_BOUND))
                if _is_motor(db)
                else contextlib.nullcontext()
            )
            with bounded:
                async with asyncio.timeout(wait):
                    if refused_is_final:
                        await _ping_unless_refused(db)
                    else:
                        await db.command("ping")
    except _Refused:
        raise DatabaseUnreachableError(
            f"cannot reach MongoDB at {address(db)} ({PLAIN_REASONS['Errno 111']}); check "
            "MONGODB_URL and that the server is running"
        ) from None
    except InvalidOperation:  # a client the app closed: a programming error, not an outage
        raise
    except (TimeoutError, PyMongoError) as exc:
        if isinstance(exc, OperationFailure) and _refuses_the_name(exc):  # it answered
            raise InvalidDatabaseError(
                f"MongoDB at {address(db)} refuses the database name {db.name!r} "
                f"({_errmsg(exc)}): name a shorter one, under 64 characters (e.g. "
                f"mongodb://host:27017/{DEFAULT_DATABASE} in MONGODB_URL)"
            ) from None
        # the sync client's bound is the driver's own: its server selection timing out
        timed_out = isinstance(exc, TimeoutError) or (
            is_sync(db) and isinstance(exc, ServerSelectionTimeoutError)
        )
        reason = why_unreachable(db) if timed_out else plainly(str(exc).split(",")[0])
        if reason == "no answer" or reason.endswith("timed out"):
            reason = (
                _why_silent_blocking(db, reason) if is_sync(db) else await _why_silent(db, reason)
            )
        raise DatabaseUnreachableError(
            f"cannot reach MongoDB at {address(db)} within {wait:g}s ({reason}); check "
            "MONGODB_URL and that the server is running (connect_timeout= sets the wait)"
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        if not _has_login(db):  # a programming error (a client of another event loop, ...)
            raise
        # the driver failed on a login answer it did not expect (a server without users)
        reason = (
            f"the connection failed: {type(exc).__name__}: {str(exc)[:200]}, while logging in "
            "with the URL's user and password: does the server check them? the embedded "
            "nx-27017 server has no users, leave user:password out"
        )
        raise DatabaseUnreachableError(
            f"cannot reach MongoDB at {address(db)} ({reason}); check MONGODB_URL and that the "
            "server is running (connect_timeout= sets the wait)"
        ) from exc


def _refuses_the_name(exc: OperationFailure) -> bool:
    """The server answered that the database's name is not one it takes (too long: a URL
    accepts it): InvalidNamespace, or its text where a server gives no code."""
    text = _errmsg(exc).lower()
    return exc.code == 73 or "database name" in text or "db name" in text


def _errmsg(exc: OperationFailure) -> str:
    return str((exc.details or {}).get("errmsg") or exc).splitlines()[0][:300]


def _is_motor(db: Any) -> bool:
    return type(db).__module__.startswith("motor.")


def _has_login(db: Any) -> bool:
    with contextlib.suppress(Exception):
        return db.client.options.pool_options._credentials is not None
    return False


_CLOSED = (
    "it closed the connection at once: what answers there is not MongoDB (an HTTP port?), or "
    "it expects TLS (add tls=true to the URL)"
)

#: The usual socket errors, said plainly (the driver's text otherwise).
PLAIN_REASONS = {
    "Errno 111": "connection refused: nothing listens on that port",
    "Errno -2": "host name not found",
    "Errno -3": "host name not found (temporary DNS failure)",
    "Errno -5": "host name not found",
    "Errno 113": "no route to host",
    "larger than server max message size": "what answers there is not MongoDB (an HTTP port?)",
    "onnection is already closed": _CLOSED,
    "onnection is closed": _CLOSED,
    "Errno 104": "connection reset by peer: " + _CLOSED,
}


def plainly(text: str) -> str:
    """A driver's connection error, said plainly when it is a usual one."""
    return next((p for k, p in PLAIN_REASONS.items() if k in text), text)


def said_plainly(error: str) -> str:
    """A driver's error whole, short: its address and the reason said plainly when it is a
    usual one ("127.0.0.1:27017: connection refused: nothing listens on that port"), without
    the driver's timeouts and topology; another error's first line."""
    head = error.split(", Timeout: ")[0].splitlines()[0] if error else ""
    parts = [p.strip(" ,") for p in re.split(r" \(configured timeouts[^)]*\)", head)]
    parts = [p for p in parts if p]
    if len(parts) > 1:  # one part per server (several hosts): each said
        return "; ".join(said_plainly(p) for p in parts)
    text = parts[0] if parts else head
    plain = plainly(text)
    if plain == text:
        return text
    where = text.split(": ", 1)[0] if ": [" in text else ""
    return f"{where}: {plain}" if where else plain


def unreachable_at_start(db: Any, exc: BaseException) -> DatabaseUnreachableError:
    """What a processor's start says when MongoDB, which answered init_job_processor, stopped
    answering before its worker started (`exc`, the driver's error, is its cause)."""
    error = DatabaseUnreachableError(
        f"cannot reach MongoDB at {address(db)} to start the worker ({why_unreachable(db)}; "
        f"{type(exc).__name__}); check MONGODB_URL and that the server is running"
    )
    error.__cause__ = exc
    return error


def why_unreachable(db: Any) -> str:
    """What the driver last saw when connecting (refused, unknown host, a replica set the
    server is not in, ...), else "no answer"."""
    not_in_set = _not_in_set(db)
    if not_in_set is not None:
        return not_in_set
    with contextlib.suppress(Exception):
        for (host, port), server in db.client.topology_description.server_descriptions().items():
            if server.error is not None:
                text = str(server.error).removeprefix(f"{host}:{port}: ").split(" (configured")[0]
                return plainly(text)
    return "no answer"


SILENT = (
    "something listens there but does not answer as MongoDB does: another kind of server "
    "(an HTTP one, such as the dashboard?), or a MongoDB too busy to answer in time"
)


NO_PRIMARY = (
    "no primary: the servers answer, but none accepts writes (a replica set electing one, or "
    "not initiated yet: rs.initiate())"
)


def _first_silent(db: Any, reason: str) -> str | tuple[str, int]:
    """When the driver heard nothing: servers that answered without a primary are a replica
    set with none (the reason said); else the first address, to see whether something listens
    there at all (`_why_silent`)."""
    with contextlib.suppress(Exception):
        topology = db.client.topology_description
        descriptions = topology.server_descriptions()
        if any(sd.server_type != SERVER_TYPE.Unknown for sd in descriptions.values()):
            return reason if topology.has_writable_server() else NO_PRIMARY
        for host, port in list(descriptions)[:1]:
            return str(host), int(port)
    return reason


async def _why_silent(db: Any, reason: str) -> str:
    """The reason, once a connection is tried (0.5 s on top of the wait, only when it failed):
    refused, or accepted with no MongoDB answer (another kind of server, or one too busy)."""
    target = _first_silent(db, reason)
    if isinstance(target, str):
        return target
    try:
        async with asyncio.timeout(0.5):
            _, writer = await asyncio.open_connection(*target)
    except ConnectionRefusedError:
        return PLAIN_REASONS["Errno 111"]
    except Exception:  # unreachable, timed out: what the driver said stands
        return reason
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return SILENT


def _why_silent_blocking(db: Any, reason: str) -> str:
    """`_why_silent` for the sync client, which has no event loop: a blocking connect."""
    target = _first_silent(db, reason)
    if isinstance(target, str):
        return target
    try:
        socket.create_connection(target, timeout=0.5).close()
    except ConnectionRefusedError:
        return PLAIN_REASONS["Errno 111"]
    except Exception:  # unreachable, timed out: what the driver said stands
        return reason
    return SILENT


class _Refused(Exception):
    """Every address the URL names refused the connection."""


async def _ping_unless_refused(db: Any) -> None:
    """The ping, ended early by `_Refused` when every seed address refuses a TCP connection
    (nothing listens there: waiting longer only delays the same answer)."""
    ping = asyncio.ensure_future(db.command("ping"))
    try:
        if await _all_refused(db):
            raise _Refused
        await ping
    finally:
        if not ping.done():
            ping.cancel()
            with contextlib.suppress(BaseException):
                await ping


async def _all_refused(db: Any) -> bool:
    """Whether every address of every seed refuses a connection. False when that cannot be
    told: no seeds, or one without a port (a mongodb+srv name before its lookup), or when any
    address accepts, times out, or fails otherwise (a name that does not resolve included)."""
    try:
        seeds = list(db.client.topology_description.server_descriptions())
    except Exception:  # not a PyMongo client (a test double, Motor's wrapper): just ping
        return False
    if not seeds or any(not isinstance(port, int) for _, port in seeds):
        return False
    loop = asyncio.get_running_loop()
    for host, port in seeds:
        try:
            async with asyncio.timeout(0.5):
                addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            return False
        for family, kind, proto, _, where in addresses:
            if not await _refuses(family, kind, proto, where):
                return False
    return True


async def _refuses(family: int, kind: int, proto: int, where: Any) -> bool:
    """Whether this one address refuses a TCP connection (within half a second)."""
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(0.5):
            await asyncio.get_running_loop().sock_connect(sock, where)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()
    return False


def open_database(url: str, timeout: float | None = None) -> Any:
    """The async database `url` names (DEFAULT_DATABASE when it names none). `timeout`: seconds
    to select a server and to connect (the driver's defaults otherwise)."""
    unknown_url_options(url)
    fix_cancelled_waits()  # see driver_fixes
    options: dict[str, Any] = {"tz_aware": True}
    if timeout is not None:
        options |= {
            "serverSelectionTimeoutMS": int(timeout * 1000),
            "connectTimeoutMS": int(timeout * 1000),
        }
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, **options)
    except (ConfigurationError, ValueError) as exc:  # InvalidURI included: a typo, not an outage
        raise InvalidArgumentError(
            f"MONGODB_URL is not a MongoDB URL: {exc} (e.g. mongodb://host:27017/dbname)"
        ) from None
    return client.get_default_database(default=DEFAULT_DATABASE)


def unknown_url_options(url: str) -> None:
    """A URL option the driver does not know, or a value it cannot read, is bad input naming
    it. The driver only warns, and goes on without the option: `?authSorce=admin` logged in
    against the wrong database, `?tls=yes` connected in plain text. A TLS file that cannot be
    read is said here too (the driver raised FileNotFoundError).

    A user name or password holding an unescaped '?' or '/' spills into what reads as the
    options, up to its last '@' at most: an option at or before the query's last '@' is never
    quoted back (it may be a part of the password)."""
    query = url.partition("?")[2]
    last_at = query.rfind("@")
    pieces: list[tuple[str, bool]] = []  # (an option as written, whether it may be secret)
    at = 0
    for piece in re.split("[&;]", query):
        if piece:
            pieces.append((piece, at <= last_at))
        at += len(piece) + 1
    hidden = InvalidArgumentError(
        "MONGODB_URL has an option the driver cannot use, or a user name or password holding "
        "a reserved character ('?', '/', '@', ':' or '%') that is not percent-encoded (encode "
        "them, e.g. with urllib.parse.quote_plus); the option is not shown: it may be a part "
        "of the password"
    )
    known = set(URI_OPTIONS_VALIDATOR_MAP) | set(URI_OPTIONS_ALIAS_MAP)
    for piece, secret in pieces:
        key = urllib.parse.unquote_plus(piece.partition("=")[0])
        if key.lower() not in known:
            if secret:
                raise hidden
            hint = did_you_mean(key.lower(), sorted(known))
            raise InvalidArgumentError(
                f"MONGODB_URL has an unknown option {key!r}{hint}: see the MongoDB connection "
                "string options (names are read in any case)"
            )
    # the driver's own reading of the options, without its warnings (and no DNS look-up):
    # each one as written, to name it, then all together (conflicts, as tls=true&ssl=false)
    named = [(f"option {p.partition('=')[0]}", p, secret) for p, secret in pieces]
    together = [("options", query, last_at >= 0)] if len(pieces) > 1 else []
    for what, piece, secret in named + together:
        try:
            split_options(piece, validate=True, warn=False)
        except (PyMongoError, ValueError, TypeError, OSError) as exc:
            if secret:
                raise hidden from None
            raise InvalidArgumentError(
                f"MONGODB_URL's {what} cannot be used: {exc} (see the MongoDB connection "
                "string options)"
            ) from None


async def close_database(db: Any) -> None:
    result = db.client.close()
    if hasattr(result, "__await__"):
        await result


async def holds_data(db: Any, prefix: str) -> bool:
    """Whether job-processor was used in this database: a worker registered its names there,
    or a job was scheduled, an event emitted or a webhook endpoint added there (an events-only
    program writes only the last two; an empty collection does not count: a read of a
    mistyped database creates one on some servers)."""
    names = {str(n) for n in await db.list_collection_names()}
    if f"{prefix}definitions" in names or f"{prefix}workers" in names:
        return True
    for kept in ("jobs", "events", "webhooks"):
        if f"{prefix}{kept}" not in names:
            continue
        coll = db.get_collection(f"{prefix}{kept}", read_preference=ReadPreference.PRIMARY)
        if await coll.find_one({}, {"_id": 1}) is not None:  # read as Storage reads
            return True
    return False


async def databases_with_data(db: Any, prefix: str, limit: int = 20) -> list[str]:
    """The other databases of this server that hold job-processor collections (best effort:
    empty when this user may not list databases); at most `limit` databases are looked into."""
    client = db.client
    try:
        names = [n for n in await client.list_database_names() if n not in _SYSTEM_DATABASES]
        return [
            name
            for name in names[:limit]
            if name != db.name and await holds_data(client[name], prefix)
        ]
    except PyMongoError:
        return []


_SYSTEM_DATABASES = frozenset({"admin", "config", "local"})
