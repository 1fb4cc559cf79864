"""How a typed payload is stored: the JSON form its model reads back as the same value (the
worker validates the stored payload again, and a handler must get what was scheduled): pure.

- A model without aliases, computed fields or secrets, at any depth (models, pydantic and
  standard dataclasses, TypedDicts): its JSON dump, as it is (one walk of it for the mask
  text, the only other work on the producer's path).
- A model with aliases: the first form that reads back as given: by alias (an alias-only
  field, even an optional one, is never read back as its default), by name, or keyed by the
  key, or nested along the `AliasPath`, each field is read from first.
- Computed fields are not stored (computed again when the job runs; read back, one would be an
  extra key: refused under `extra="forbid"`, kept beside the property under "allow").
- A secret (`SecretStr`, `SecretBytes`, `Secret[...]`, declared or under an `Any` field or an
  extra key) whose stored form is pydantic's mask is refused (a serializer that writes its
  value, a secret left out, a plain str reading '**********' are stored as they are).
- Every form is read back through the model before it is stored (one validation): a form
  that does not read back as given (strict mode or a `Json` field, which refuse their JSON
  text; an `AliasPath` with a list index; a validator that gives another value for its own
  output) is refused naming the fields: never stored to be read back as defaults or errored
  at run time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import itertools
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import typing_extensions
from pydantic import AliasChoices, AliasPath, BaseModel, SecretBytes, SecretStr, ValidationError

from .errors import InvalidPayloadError

Doc = dict[str, Any]

try:  # pydantic 2.7+
    from pydantic import Secret

    SECRET_TYPES: tuple[type, ...] = (SecretStr, SecretBytes, Secret)
except ImportError:  # pragma: no cover - an older pydantic
    SECRET_TYPES = (SecretStr, SecretBytes)

#: What pydantic's JSON form of a secret is.
MASK = "**********"


@dataclass(frozen=True)
class Traits:
    """What storing a model's payloads needs, found once per model."""

    checked: bool  # aliases, computed fields or secrets at some depth: the form is checked
    computed: bool  # computed fields at some depth: left out of the dump


@functools.cache
def traits(model: type[BaseModel]) -> Traits:
    found = _Walk()
    found.walk(model)
    return Traits(found.checked, found.computed)


class _Walk:
    """The fields of a model and of the structured types in them, once each."""

    def __init__(self) -> None:
        self.seen: set[Any] = set()
        self.checked = self.computed = False

    def walk(self, kind: Any) -> None:
        if kind in self.seen:
            return
        self.seen.add(kind)
        if getattr(kind, "__pydantic_computed_fields__", None):
            self.checked = self.computed = True
        for _, annotation, aliased in _fields_of(kind):
            classes, unresolved = _classes(annotation)
            self.checked = self.checked or aliased or unresolved
            for inner in classes:
                if issubclass(inner, SECRET_TYPES):
                    self.checked = True
                elif _structured(inner):
                    self.walk(inner)


def _structured(kind: type) -> bool:
    if issubclass(kind, BaseModel) or dataclasses.is_dataclass(kind):
        return True
    return typing_extensions.is_typeddict(kind)  # typing's and typing_extensions' alike


def _fields_of(kind: Any) -> list[tuple[str, Any, bool]]:
    """(name, annotation, has an alias) of each field of a model, a dataclass (pydantic's or
    the standard one) or a TypedDict."""
    infos = getattr(kind, "__pydantic_fields__", None)
    if isinstance(infos, dict):  # a model, a pydantic dataclass
        return [(n, f.annotation, bool(f.alias or f.validation_alias)) for n, f in infos.items()]
    if dataclasses.is_dataclass(kind):
        return [(f.name, f.type, False) for f in dataclasses.fields(kind)]
    try:  # a TypedDict (an alias there is an Annotated Field: the form is checked)
        hints = typing.get_type_hints(kind, include_extras=True)
    except Exception:  # a name that does not resolve here (a local class): checked
        return [(n, Any, True) for n in getattr(kind, "__annotations__", {})]
    return [
        (n, a, typing_extensions.get_origin(a) is typing_extensions.Annotated)
        for n, a in hints.items()
    ]


def _classes(annotation: Any) -> tuple[list[type], bool]:
    """The classes an annotation names, in its arguments too (`list[Inner] | None`), and
    whether it holds a name not resolved here (a ForwardRef, a local class's name)."""
    found: list[type] = []
    unresolved = False
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, typing.ForwardRef)):
            unresolved = True
            continue
        origin = typing.get_origin(item)
        if inspect.isclass(item):
            found.append(item)
        elif inspect.isclass(origin):
            found.append(origin)
        if origin is not typing.Literal:  # a Literal's arguments are values
            stack.extend(typing.get_args(item))
    return found, unresolved


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
    dump = functools.partial(value.model_dump, mode="json", exclude_computed_fields=found.computed)
    plain: Doc = dump()
    # a secret stored as the mask, whether its type is declared or not (an `Any`, an extra key)
    masked = secret_stored_as_mask(value, plain, computed=found.computed)
    if masked is not None:
        raise InvalidPayloadError(secret_message(masked, model.__name__))
    # read back as the worker will (strict mode, a Json field, an alias the traits cannot
    # see, behind a type alias or a TypedDict's alias generator, would not): one validation
    if not found.checked and not _differing(model, value, plain):
        return plain, []
    by_alias: Doc = dump(by_alias=True)
    first = _differing(model, value, by_alias)
    if not first:
        return by_alias, []
    paths = (_by_read_path(model, value, plain, nested, found.computed) for nested in (False, True))
    for form in itertools.chain((plain,), paths):  # each built only if needed
        if form is not None and not _differing(model, value, form):
            return form, []
    return by_alias, first


def secret_stored_as_mask(value: BaseModel, form: Doc, *, computed: bool) -> str | None:
    """The first field of `form` (the JSON form, by field name) stored as pydantic's mask
    that holds a secret object in `value` (a plain str reading '**********' is no secret)."""
    masked = _paths(form, lambda v: v == MASK)
    if not masked:  # the common case: one walk of the form, no other dump
        return None
    dumped = value.model_dump(exclude_computed_fields=computed)
    return next(_masked_secrets(form, dumped), None)


def secret_message(path: str, owner: str) -> str:
    return (
        f"payload field {path!r} of {owner} is a secret stored as pydantic's mask ({MASK!r}), "
        "so its consumer would get the mask; pass a reference to the secret (a vault key, an "
        "environment variable's name), make it a str (the dashboard and the job's log mask "
        "fields named like secrets), or give it a field_serializer that writes its value"
    )


def _paths(value: Any, hit: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the values `hit` accepts (a sequence's items under its key)."""
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _paths(item, hit, f"{prefix}{key}.")]
    if isinstance(value, list | tuple | set | frozenset):
        return [p for item in value for p in _paths(item, hit, prefix)]
    return [prefix[:-1]] if hit(value) else []


def _masked_secrets(form: Any, dumped: Any, prefix: str = "") -> Iterator[str]:
    """The paths where `form` (the JSON form) holds the mask and `dumped` (the Python dump,
    walked beside it: a key's JSON text may differ, an Enum's value, `true`) a secret."""
    if isinstance(form, Mapping) and isinstance(dumped, Mapping):
        for (key, item), inner in zip(form.items(), dumped.values(), strict=False):
            yield from _masked_secrets(item, inner, f"{prefix}{key}.")
    elif isinstance(form, list) and isinstance(dumped, list | tuple | set | frozenset):
        for item, inner in zip(form, dumped, strict=False):
            yield from _masked_secrets(item, inner, prefix)
    elif form == MASK and isinstance(dumped, SECRET_TYPES):
        yield prefix[:-1]


def _by_read_path(
    model: type[BaseModel], value: BaseModel, plain: Doc, by_alias: bool, computed: bool
) -> Any:
    """Each field under the key, or nested along the path, the model reads it from first (in
    nested models too), its value dumped by name or (`by_alias`) by alias (a nested model's
    own aliases); None when a field is read only through a path with a list index."""
    out: Doc = {}
    for name, item in plain.items():
        info = model.model_fields.get(name)
        if info is None:  # an extra key (extra="allow") or a computed field: by its name
            out[name] = item
            continue
        inner = getattr(value, name, None)
        if isinstance(inner, BaseModel) and isinstance(item, dict):
            item = _by_read_path(type(inner), inner, item, by_alias, computed)
            if item is None:
                return None
        elif by_alias:
            dumped = value.model_dump(
                mode="json", by_alias=True, include={name}, exclude_computed_fields=computed
            )
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
    computed = traits(model).computed
    now, was = (v.model_dump(mode="json", exclude_computed_fields=computed) for v in (read, value))
    # a subclass's own fields are not read by the model (the handler gets a `model`): only
    # the fields read back are compared
    keys = now.keys() | was.keys() if type(value) is model else now.keys()
    differing = [k for k in keys if now.get(k) != was.get(k)]
    if differing:  # the same values once a naive datetime is taken as UTC (a serializer that
        # writes one with "Z": read back aware, written again "+00:00Z"; the naive check judges)
        now, was = (
            _naive_as_utc(v.model_dump(exclude_computed_fields=computed)) for v in (read, value)
        )
        differing = [k for k in differing if now.get(k) != was.get(k)]
    if type(value) is not model:  # a subclass's serializers wrote the form: what it reads
        # back is compared with what the model's own form of the same values reads back as
        base = model.model_construct(**{k: getattr(value, k) for k in model.model_fields})
        own_form, unread = form_of(model, base)  # the model's own form: by alias, by path
        if unread:
            return sorted({*differing, *unread})
        own = model.model_validate(own_form)
        now, was = (
            _naive_as_utc(v.model_dump(exclude_computed_fields=computed)) for v in (read, own)
        )
        differing += [
            k for k in model.model_fields if k not in differing and now.get(k) != was.get(k)
        ]
    return sorted(differing)


def _naive_as_utc(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    if isinstance(value, Mapping):
        return {k: _naive_as_utc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_naive_as_utc(v) for v in value]
    return value


def not_read_back(model: type[BaseModel], fields: list[str]) -> InvalidPayloadError:
    return InvalidPayloadError(
        f"payload {model.__name__} cannot be stored in a form it reads back as given: "
        f"{', '.join(repr(f) for f in fields)} would read back otherwise (strict mode or a "
        "Json field, which refuse the JSON text they are stored as; a field read only through "
        "an AliasPath with a list index; a validator that gives another value for its own "
        "output): make such a field lax (no strict=True; a dict, not Json[...]), give it a "
        "plain alias, or populate_by_name=True"
    )
