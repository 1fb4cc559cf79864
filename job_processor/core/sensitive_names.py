"""Which field names are sensitive: the default names and the rules by which a key holds one
(any case, camelCase words apart, hyphens as `_`, a path's last part, a prefix or suffix
word). Pure; `core.masking` masks values by these rules, and `core.definitions` refuses a
limit key filled from a sensitive field."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Used when `create_dashboard(sensitive_fields=...)` is not given.
DEFAULT_SENSITIVE_FIELDS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "private_key",
    "access_key",
    "session",
    "ssn",
    "card_number",
    "cvv",
)

#: A lower-case letter or digit followed by an upper-case one: a camelCase word boundary.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def norm_name(name: str) -> str:
    """`X-Api-Key`, `Client_Secret` -> `x_api_key`, `client_secret`: lower case, hyphens read
    as `_`."""
    return name.strip().casefold().replace("-", "_")


def name_forms(name: str) -> set[str]:
    """A name as read (`norm_name`), and with its camelCase words apart: `accessToken` is also
    `access_token`, `PassWord` stays `password` too."""
    return {norm_name(name), norm_name(_CAMEL.sub("_", name))}


#: What separates the parts of a config key or a path (`spring.datasource.password`,
#: `db:password`, `vault/token`): a key is also read by its last part.
_PATH = re.compile(r"[.:/]+")


def key_forms(key: str) -> set[str]:
    """A key's forms (`name_forms`), and its last part's when it has several
    (`spring.datasource.password` is also `password`; `token.count` is `count`, not a
    token)."""
    last = _PATH.split(key.strip())[-1]
    return name_forms(key) | (name_forms(last) if last and last != key.strip() else set())


def fields_forms(fields: Iterable[str]) -> tuple[str, ...]:
    """The sensitive names as `name_is_sensitive` compares them (each in its `name_forms`)."""
    return tuple(sorted({n for f in fields if f and f.strip() for n in name_forms(f)}))


def name_is_sensitive(key: str, forms: Iterable[str]) -> bool:
    """Whether `key` holds one of the names (`fields_forms`): equal to it, or starting or
    ending with it as a word (`db_password`, `password_hash`)."""
    return any(
        k == f or k.startswith(f + "_") or k.endswith("_" + f)
        for k in key_forms(key)
        for f in forms
    )
