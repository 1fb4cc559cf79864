"""Reading documents another program may have written (a hand edit, an older version, a null
where a value belongs) for display and status (pure): a field of the wrong type is read as its
default, never a failure of every listing. The jobs collection has its own (`Job.read`, which
keeps such fields in `invalid_fields`); running things validates strictly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_leniently(
    model: type[M], doc: Mapping[str, Any], fallbacks: Mapping[str, Any] | None = None
) -> M | None:
    """`model` read from a stored document: each top-level field that does not validate (of the
    wrong type, null, a list with a bad item) is read as the model's default, or, for a field
    the model requires, as `fallbacks[field]`. None when the document cannot be read even so
    (a required field with no fallback): the caller skips it, with a note."""
    data = dict(doc)
    given = dict(fallbacks or {})
    for _ in range(3):  # one pass reports every bad field; a fallback may fail in turn
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) if e["loc"] else "" for e in exc.errors()}
        for name in bad:
            field = model.model_fields.get(name)
            if name in given:
                data[name] = given.pop(name)  # once: a fallback that fails too is no answer
            elif field is not None and not field.is_required() and name in data:
                del data[name]
            else:
                return None
    return None


def texts(value: Any) -> list[str]:
    """The texts of a stored list of names or paths (a worker's `names`, a definition's
    `sensitive_fields`, an endpoint's `events`): a lone text is one (as MongoDB's `$in`
    matches it); none when it is no list nor text (null, a number)."""
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def unreadable_texts(value: Any) -> bool:
    """A stored list of paths that no reader can read (neither null, a text, nor a list of
    texts): what it names is unknown (a definition's `sensitive_fields`: hide everything)."""
    if value is None or isinstance(value, str):
        return False
    return not isinstance(value, list) or not all(isinstance(v, str) for v in value)


def mapping(value: Any) -> Mapping[str, Any]:
    """A stored mapping (a worker's `definitions` digests); empty when it is no mapping."""
    return value if isinstance(value, Mapping) else {}
