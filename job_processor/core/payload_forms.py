"""How a typed payload is stored: the JSON form its model reads back as the same value (the
worker validates the stored payload again, and a handler must get what was scheduled): pure.

- A model without aliases, computed fields or secrets, at any depth: its JSON dump, as it is
  (no other work on the producer's path).
- A model with aliases: the first form that reads back as given: by alias (an alias-only
  field, even an optional one, is never read back as its default), by name, or keyed by the
  key, or nested along the `AliasPath`, each field is read from first.
- A computed field is left out where the model forbids or keeps extra keys (read back, it
  would be an extra key: refused, or kept beside the property).
- A secret (`SecretStr`, `SecretBytes`, `Secret[...]`) is refused: its JSON form is the mask.
- A form that does not read back as given (an `AliasPath` with a list index, a validator that
  gives another value for its own output) is refused naming the fields: never stored to be
  read back as defaults.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, AliasPath, BaseModel, SecretBytes, SecretStr, ValidationError

from .errors import InvalidPayloadError

Doc = dict[str, Any]

try:  # pydantic 2.7+
    from pydantic import Secret

    SECRET_TYPES: tuple[type, ...] = (SecretStr, SecretBytes, Secret)
except ImportError:  # pragma: no cover - an older pydantic
    SECRET_TYPES = (SecretStr, SecretBytes)


@dataclass(frozen=True)
class Traits:
    """What storing a model's payloads needs, found once per model."""

    checked: bool  # aliases or computed fields at some depth: the form is checked
    secrets: tuple[str, ...]  # the fields (dotted paths) holding a secret
    exclude: set[str] | None  # computed fields left out of the dump (never changed)


@functools.cache
def traits(model: type[BaseModel]) -> Traits:
    checked, secrets = _walk(model, "", set())
    computed = set(model.model_computed_fields)
    keeps_extra = model.model_config.get("extra") in ("forbid", "allow")
    return Traits(checked, tuple(secrets), computed if computed and keeps_extra else None)


def _walk(model: type[BaseModel], prefix: str, seen: set[type]) -> tuple[bool, list[str]]:
    """Whether `model` or a model in its fields has aliases or computed fields, and the
    fields holding a secret."""
    seen.add(model)
    checked = bool(model.model_computed_fields)
    secrets: list[str] = []
    for name, info in model.model_fields.items():
        checked = checked or bool(info.alias or info.validation_alias)
        for kind in _classes(info.annotation):
            if issubclass(kind, SECRET_TYPES):
                secrets.append(prefix + name)
            elif issubclass(kind, BaseModel) and kind not in seen:
                inner, found = _walk(kind, f"{prefix}{name}.", seen)
                checked, secrets = checked or inner, secrets + found
    return checked, secrets


def _classes(annotation: Any) -> list[type]:
    """The classes an annotation names, in its arguments too (`list[Inner] | None`)."""
    found: list[type] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        origin = typing.get_origin(item)
        if inspect.isclass(item):
            found.append(item)
        elif inspect.isclass(origin):
            found.append(origin)
        stack.extend(typing.get_args(item))
    return found


def stored_form(model: type[BaseModel], value: BaseModel) -> Doc:
    """The payload as JSON that the model reads back as the same value; InvalidPayloadError,
    naming the fields, when there is none."""
    form, fields = form_of(model, value)
    if fields:
        raise not_read_back(model, fields)
    return form


def form_of(model: type[BaseModel], value: BaseModel) -> tuple[Doc, list[str]]:
    """The form that reads back as given, and []; or the form by alias, and the fields it
    does not read back as given (the caller refuses it, after the checks that say why a
    value cannot be stored at all: a NaN)."""
    found = traits(model)
    if found.secrets:
        raise InvalidPayloadError(
            f"payload field {found.secrets[0]!r} of {model.__name__} is a secret: its JSON "
            "form is masked ('**********'), so the handler would get the mask; pass a "
            "reference to the secret (a vault key, an environment variable's name), or make "
            "it a str (the dashboard and the job's log mask fields named like secrets)"
        )
    plain: Doc = value.model_dump(mode="json", exclude=found.exclude)
    if not found.checked:
        return plain, []
    by_alias: Doc = value.model_dump(mode="json", by_alias=True, exclude=found.exclude)
    paths = (_by_read_path(model, value, plain, nested) for nested in (False, True))
    for form in itertools.chain((by_alias, plain), paths):  # each built only if needed
        if form is not None and not _differing(model, value, form):
            return form, []
    return by_alias, _differing(model, value, by_alias)


def _by_read_path(model: type[BaseModel], value: BaseModel, plain: Doc, by_alias: bool) -> Any:
    """Each field under the key, or nested along the path, the model reads it from first,
    its value dumped by name or (`by_alias`) by alias (a nested model's own aliases); None
    when a field is read only through a path with a list index."""
    out: Doc = {}
    for name, item in plain.items():
        info = model.model_fields.get(name)
        if info is None:  # an extra key (extra="allow") or a computed field: by its name
            out[name] = item
            continue
        if by_alias:
            dumped = value.model_dump(mode="json", by_alias=True, include={name})
            item = next(iter(dumped.values()), item)
        path = _read_path(info, name)
        if path is None:
            return None
        at = out
        for key in path[:-1]:
            nested = at.setdefault(key, {})
            if not isinstance(nested, dict):
                return None
            at = nested
        at[path[-1]] = item
    return out


def _read_path(info: Any, name: str) -> list[str] | None:
    """The keys the model reads a field from: its validation alias (the first of its choices
    that is a key or a path of keys), its alias, or its name; None for a path with a list
    index only."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((c for c in alias.choices if _keys(c) is not None), None)
        if alias is None:
            return None
    if alias is not None:
        return _keys(alias)
    return [info.alias or name]


def _keys(alias: Any) -> list[str] | None:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath) and alias.path and all(isinstance(k, str) for k in alias.path):
        return [str(k) for k in alias.path]
    return None


def _differing(model: type[BaseModel], value: BaseModel, form: Doc) -> list[str]:
    """The fields `form` does not read back as they are in `value`, compared as stored (a
    field excluded from the dump, `Field(exclude=True)`, is not stored: its default is read
    back; free-form data reads back as its JSON form, a datetime as its text)."""
    try:
        read = model.model_validate(form)
    except ValidationError as exc:
        return sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")}) or ["(payload)"]
    if read == value:
        return []
    exclude = traits(model).exclude
    now, was = (v.model_dump(mode="json", exclude=exclude) for v in (read, value))
    return sorted(k for k in now.keys() | was.keys() if now.get(k) != was.get(k))


def not_read_back(model: type[BaseModel], fields: list[str]) -> InvalidPayloadError:
    return InvalidPayloadError(
        f"payload {model.__name__} cannot be stored in a form it reads back as given: "
        f"{', '.join(repr(f) for f in fields)} would read back otherwise (a field read only "
        "through an AliasPath with a list index, or a validator that gives another value for "
        "its own output): give such a field a plain alias, or populate_by_name=True"
    )
