"""Sentry cron check-ins, when sentry_sdk is installed and initialised (otherwise nothing)."""

from __future__ import annotations

import math
from typing import Any

from .definitions import CronDef


def _client_active() -> bool:
    try:
        import sentry_sdk
    except ImportError:
        return False
    return bool(sentry_sdk.get_client().is_active())


def monitor_config(cron: CronDef) -> dict[str, Any] | None:
    """Upserts the monitor with our schedule. Sentry's crontab has no seconds field: 6-field
    crons send check-ins without a config (create that monitor in Sentry by hand)."""
    if len(cron.cron_string.split()) == 6:
        return None
    config: dict[str, Any] = {
        "schedule": {"type": "crontab", "value": cron.cron_string},
        "timezone": cron.timezone,
        "checkin_margin": max(1, math.ceil(cron.checkin_margin)),
    }
    if cron.max_runtime_in_minutes is not None:
        config["max_runtime"] = max(1, math.ceil(cron.max_runtime_in_minutes))
    return config


def checkin(
    name: str,
    cron: CronDef,
    status: str,
    check_in_id: str | None = None,
    duration: float | None = None,
) -> str | None:
    """Send one check-in ("in_progress", "ok" or "error"); returns its id. Never raises."""
    if not _client_active():
        return None
    try:
        from sentry_sdk.crons import capture_checkin

        result = capture_checkin(
            monitor_slug=name,
            check_in_id=check_in_id,
            status=status,
            duration=duration,
            monitor_config=monitor_config(cron),  # type: ignore[arg-type]
        )
        return str(result) if result is not None else None
    except Exception:  # monitoring must never break a job
        return None
