"""What every config section is built from: strict models, and fields that say what they decide.

Each field is marked with what it decides, so that the fingerprints that skip or resume a stage are derived from the
schema rather than from lists kept beside it:
    content    what an output row says (a prompt, a temperature, a model)
    scope      which rows exist, or how many (a cap, a limit, a budget)
    execution  how fast or where the work runs, never what it produces (actors, retries, ports, paths)
`tests/test_config.py` fails for a field without a mark, so a new field cannot land on the wrong side by default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

Decides = Literal["content", "scope", "execution"]
DECIDES = ("content", "scope", "execution")
OUTPUT_KINDS: tuple[Decides, ...] = ("content", "scope")


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def Field(default: Any = ..., *, decides: Decides, **kwargs: Any) -> Any:  # noqa: N802 (pydantic's name)
    """pydantic's Field with the mark every config field must carry."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["decides"] = decides
    return PydanticField(default, json_schema_extra=extra, **kwargs)


def field_mark(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    return extra.get("decides") if isinstance(extra, dict) else None


def decided_by(section: BaseModel, kinds: tuple[Decides, ...] = OUTPUT_KINDS,
               exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The values of `section`'s fields marked with one of `kinds`, nested sections included (by their own marks):
    the part of a config a fingerprint hashes. `exclude` holds dotted names relative to `section`."""
    picked: dict[str, Any] = {}
    for name in type(section).model_fields:
        if name in exclude or field_mark(type(section), name) not in kinds:
            continue
        value = getattr(section, name)
        nested = {key.split(".", 1)[1] for key in exclude if key.startswith(f"{name}.")}
        if isinstance(value, StrictModel):
            picked[name] = decided_by(value, kinds, frozenset(nested))
        elif isinstance(value, list) and value and all(isinstance(item, StrictModel) for item in value):
            picked[name] = [decided_by(item, kinds, frozenset(nested)) for item in value]
        else:
            picked[name] = _plain(value)
    return picked


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def unmarked_fields(models: list[type[BaseModel]]) -> list[str]:
    """`Model.field` for each field without a valid mark: what the schema test reports."""
    return [f"{model.__name__}.{name}" for model in models for name in model.model_fields
            if field_mark(model, name) not in DECIDES]
