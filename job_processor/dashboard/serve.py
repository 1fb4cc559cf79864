"""`job-processor dashboard`: serve the dashboard from MONGODB_URL alone (uvicorn).

    MONGODB_URL=mongodb://... JOB_PROCESSOR_DASHBOARD_AUTH=admin:secret \\
        job-processor dashboard --host 0.0.0.0 --port 8080

Without credentials it serves loopback hosts only; `--no-auth` when a proxy in front of it
authenticates. Never runs an app factory and never changes definitions.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
from typing import Any

from ..core.errors import JobProcessorError
from ..core.masking import DEFAULT_SENSITIVE_FIELDS
from ..storage.connect import MISSING_URL, URL_ENV, check_reachable, close_database, open_database
from ..storage.local_server import bound_socket, free_port_near
from .app import create_dashboard
from .auth import UNSET, is_loopback
from .hosts import patterns_from

AUTH_ENV = "JOB_PROCESSOR_DASHBOARD_AUTH"


class DashboardUsageError(JobProcessorError):
    pass


def parse_auth(value: str | None, no_auth: bool) -> Any:
    if no_auth:
        if value:
            raise DashboardUsageError(f"give either --auth (or {AUTH_ENV}) or --no-auth, not both")
        return None
    if not value:
        return UNSET
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise DashboardUsageError(
            f"--auth / {AUTH_ENV} must be USER:PASSWORD, e.g. admin:a-long-secret"
        )
    return (user, password)


def shown(host: str) -> str:
    """A host as it is written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def listening_socket(host: str, port: int) -> socket.socket:
    """The dashboard's socket, bound; DashboardUsageError (exit 2) with the fix when the port
    is taken or the address is not this machine's."""
    try:
        sock = bound_socket(host, port)
    except OverflowError:
        raise DashboardUsageError(f"--port {port}: a port is a number from 0 to 65535") from None
    except OSError as exc:
        where = f"{shown(host)}:{port}"
        if exc.errno == errno.EADDRINUSE:
            free = free_port_near(host, port)
            fix = (
                f"e.g. job-processor dashboard --port {free} (free now)"
                if free is not None
                else "or --port 0 for any free one"
            )
            raise DashboardUsageError(
                f"{where} is already in use by another program: pick another port, {fix}"
            ) from None
        raise DashboardUsageError(
            f"cannot listen on {where} ({exc.strerror or exc}): check --host and --port"
        ) from None
    sock.set_inheritable(True)
    # listening already: a connection made as soon as the URL is printed waits in the backlog
    # for the server to start (bound only, it was refused: a flaky test on a loaded machine)
    sock.listen(2048)
    return sock


async def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise DashboardUsageError(
            "the dashboard needs its extra: pip install 'job-processor[dashboard]'"
        ) from None
    auth = parse_auth(args.auth or os.environ.get(AUTH_ENV) or None, args.no_auth)
    fields = None  # the defaults; names given are added to them (never fewer masked)
    if args.sensitive_fields is not None:
        extra = [f.strip() for f in args.sensitive_fields.split(",") if f.strip()]
        if not extra:
            raise DashboardUsageError(
                "--sensitive-fields names no field: give the names to mask beside the default "
                "ones, e.g. --sensitive-fields iban,tax_id"
            )
        fields = [*DEFAULT_SENSITIVE_FIELDS, *extra]
    url = os.environ.get(URL_ENV)
    if not url:
        raise DashboardUsageError(MISSING_URL)
    allowed = patterns_from(args.allowed_hosts)
    if auth is None and allowed is None and not is_loopback(args.host):
        raise DashboardUsageError(
            f"--no-auth on {args.host} answers loopback host names only (a page of another site "
            "must not reach an unauthenticated dashboard): pass --allowed-hosts with the names "
            "your proxy forwards (e.g. --allowed-hosts jobs.example.com), or '*' for any"
        )
    wait = getattr(args, "timeout", 5.0)
    db = open_database(url, wait)
    app = create_dashboard(
        db,
        auth=auth,
        read_only=args.read_only,
        sensitive_fields=fields,
        collection_prefix=getattr(args, "prefix", "job_processor_"),
        host=args.host,
        allowed_hosts=allowed,
    )
    # the port before MongoDB: a busy one is said at once (exit 2), not after an outage's wait
    # as "cannot reach MongoDB" (exit 3)
    try:
        sock = listening_socket(args.host, args.port)  # before the URL is printed: never dead
    except DashboardUsageError:
        await close_database(db)
        raise
    # Once the arguments are checked: a wrong MONGODB_URL fails now (exit 3), not as a slow
    # 503 on every page.
    try:
        await check_reachable(db, wait, refused_is_final=True)
    except JobProcessorError:
        sock.close()
        await close_database(db)
        raise
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        log_level="warning",
        lifespan="off",
    )

    class Server(uvicorn.Server):
        """Ctrl-C / SIGTERM stop it gracefully and the command exits 0 (as `run` and `server`
        do), instead of uvicorn raising the signal again once it has stopped."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for open connections
            self.should_exit = True

    server = Server(config)
    port = sock.getsockname()[1]  # the one the system chose for --port 0
    access = (
        "no login: loopback only"
        if auth is UNSET
        else ("no login: --no-auth" if auth is None else f"login {auth[0]}")
    )
    # this socket's own address (the proxy in front strips --root-path before it gets here)
    proxied = f", {args.root_path}/ through the proxy that strips it" if args.root_path else ""
    print(
        f"job-processor dashboard on http://{shown(args.host)}:{port}/ "
        f"(database {db.name}, {access}{', read-only' if args.read_only else ''}{proxied})",
        flush=True,
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
    print("job-processor dashboard: stopped", flush=True)
    return 0
