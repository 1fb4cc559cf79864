"""What a process without the payload model can check of a payload (pure).

A worker registers, beside its payload model's JSON schema, a summary of the model's fields:
for each, the keys pydantic accepts for it (its validation aliases, and its name when the
model validates by name too) and whether it is required; and whether extra keys are forbidden.
The CLI and the dashboard (`jobs new`, which have no models) check a payload against it: a
required field missing, or an unknown key where extras are forbidden, is refused before the
job is written. Types and constraints stay the worker's to check, when the job runs.

No summary is recorded (so nothing is checked here) for what a summary cannot describe: a
model that is not a plain BaseModel (a RootModel), a field read through an `AliasPath`, or a
`before`/`wrap` model validator (it may rename or fill in keys: legacy payloads).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, RootModel

from .errors import InvalidPayloadError, did_you_mean

Doc = dict[str, Any]


def payload_fields(model: Any) -> Doc | None:
    """The summary of `model`'s fields the registry keeps (None: nothing can be checked)."""
    if not isinstance(model, type) or not issubclass(model, BaseModel):
        return None
    if issubclass(model, RootModel):
        return None
    validators = model.__pydantic_decorators__.model_validators.values()
    if any(v.info.mode in ("before", "wrap") for v in validators):
        return None
    config = model.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    by_alias = config.get("validate_by_alias", True) is not False
    fields: list[Doc] = []
    for name, info in model.model_fields.items():
        aliases = _aliases(info.validation_alias if info.validation_alias else info.alias)
        if aliases is None:
            return None
        keys = aliases if by_alias else []
        if not keys or by_name or not by_alias:
            keys = [*keys, name]
        fields.append({"keys": list(dict.fromkeys(keys)), "required": info.is_required()})
    return {"fields": fields, "forbid": config.get("extra") == "forbid"}


def _aliases(alias: Any) -> list[str] | None:
    """The keys an alias accepts ([] for none; None when one is not a plain key)."""
    if alias is None:
        return []
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices) and all(isinstance(c, str) for c in alias.choices):
        return [str(c) for c in alias.choices]
    return None


def check_payload_fields(
    name: str, model: str | None, summary: Any, payload: Mapping[str, Any]
) -> None:
    """Refuse a payload whose keys the summary says the model would refuse (InvalidPayloadError
    naming the fields); nothing is checked without a summary (an older worker's registry)."""
    if not isinstance(summary, Mapping) or not isinstance(summary.get("fields"), list):
        return
    fields = [f for f in summary["fields"] if isinstance(f, Mapping) and f.get("keys")]
    accepted = {str(k) for f in fields for k in f["keys"]}
    missing = [
        str(f["keys"][0])
        for f in fields
        if f.get("required") and not any(k in payload for k in f["keys"])
    ]
    unknown = [k for k in payload if k not in accepted] if summary.get("forbid") else []
    problems = []
    if missing:
        # a model that ignores extra keys: a typo of a required field is named here (when it
        # forbids them, the unknown keys are listed below with their did-you-mean)
        ignored = (
            [] if unknown else [k for k in payload if isinstance(k, str) and k not in accepted]
        )
        problems.append(f"missing {', '.join(map(repr, missing))}{misspelled(missing, ignored)}")
    if unknown:
        problems.append(
            f"unknown {', '.join(map(repr, unknown))}{did_you_mean(unknown[0], accepted)}"
        )
    if problems:
        known = ", ".join(repr(str(f["keys"][0])) for f in fields) or "none"
        raise InvalidPayloadError(
            f"job {name!r}: payload does not match {model or 'its payload model'}: "
            f"{'; '.join(problems)} (its fields: {known})"
        )


def accepted_keys(model: Any) -> set[str] | None:
    """The keys `model` reads (its fields' names and aliases, from its summary); None when a
    summary cannot describe it."""
    summary = payload_fields(model)
    if summary is None:
        return None
    return {str(k) for f in summary["fields"] for k in f["keys"]}


def misspelled(missing: list[str], ignored: list[str]) -> str:
    """For required fields missing beside keys the model does not read that are close to them
    (`custmer` for `customer`): says so, since the model ignores such a key."""
    said = []
    for field in missing:
        close = difflib.get_close_matches(field, ignored, n=1, cutoff=0.6)
        if close:
            said.append(f"{close[0]!r} is not a field (did you mean {field!r}?)")
    return "".join(f"; {s}" for s in said)
