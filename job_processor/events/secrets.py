"""Webhook signing secrets: how they are given (`webhook_secrets=`, or the JSON object in
JOB_PROCESSOR_WEBHOOK_SECRETS), parsed, generated, and how a body is signed (the Standard
Webhooks scheme: HMAC-SHA256 over "{msg_id}.{timestamp}.{body}"). A secret never shows in a
repr, a str or an error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets as _secrets
from collections.abc import Mapping
from typing import Any

from ..core.errors import InvalidDefinitionError

#: The prefix of a secret's text form ("whsec_" + base64 of the key).
SECRET_PREFIX = "whsec_"
#: The environment variable holding secret_ref -> secret (a JSON object).
SECRETS_ENV = "JOB_PROCESSOR_WEBHOOK_SECRETS"


class Secret:
    """A webhook signing key. Its repr and str never show it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def key(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def parse_secret(ref: str, value: Any) -> Secret:
    """'whsec_' + base64 -> the key bytes. Errors name the ref, never the value."""
    fix = (
        f"webhook secret {ref!r} must be 'whsec_' followed by base64 (the value is not shown); "
        "generate one with job_processor.webhooks.generate_secret()"
    )
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise InvalidDefinitionError(fix)
    body = value[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (ValueError, TypeError):
        raise InvalidDefinitionError(fix) from None
    if len(key) < 16:
        raise InvalidDefinitionError(
            f"webhook secret {ref!r} is {len(key)} bytes once decoded: use at least 16 "
            "(generate one with job_processor.webhooks.generate_secret())"
        )
    return Secret(key)


def load_secrets(
    given: Mapping[str, str] | None, environ: Mapping[str, str] | None = None
) -> dict[str, Secret]:
    """`webhook_secrets=` when given, else the JSON object in JOB_PROCESSOR_WEBHOOK_SECRETS."""
    source = "webhook_secrets"
    if given is None:
        raw = (os.environ if environ is None else environ).get(SECRETS_ENV)
        if not raw:
            return {}
        source = SECRETS_ENV
        try:
            given = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidDefinitionError(
                f"{SECRETS_ENV} must be a JSON object of secret_ref -> 'whsec_...' "
                f"(invalid JSON at character {exc.pos})"
            ) from None
    if not isinstance(given, Mapping):
        raise InvalidDefinitionError(
            f"{source} must be a mapping of secret_ref -> 'whsec_...', got {type(given).__name__}"
        )
    out: dict[str, Secret] = {}
    for ref, value in given.items():
        if not isinstance(ref, str) or not ref:
            raise InvalidDefinitionError(f"{source}: secret refs must be non-empty strings")
        out[ref] = parse_secret(ref, value)
    return out


def generate_secret(nbytes: int = 32) -> str:
    """A new random signing secret, "whsec_" + base64."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def sign(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: "v1,<base64 HMAC-SHA256>" over
    "{msg_id}.{timestamp}.{body}"."""
    mac = hmac.new(secret.key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")
