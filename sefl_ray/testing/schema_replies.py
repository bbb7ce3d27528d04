"""Scripted LLM replies that satisfy whatever JSON schema a request asks for, for the loopback server.

Synthesis and judging ask for several schemas per conversation; answering each request with the smallest valid
instance of its own `response_format` schema lets tests and benchmarks drive the whole machinery without a model.
"""

from __future__ import annotations

import json
from typing import Any, Callable


def minimal_instance(
    schema: dict[str, Any], defs: dict[str, Any] | None = None, text: str = "text",
    make_text: Callable[[str], str] | None = None,
) -> Any:
    """The smallest instance of `schema`; strings are `text` (the path to them) or `make_text(path)`, fitted to the
    schema's length bounds."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return minimal_instance(defs[schema["$ref"].split("/")[-1]], defs, text, make_text)
    if "anyOf" in schema:
        return minimal_instance(schema["anyOf"][0], defs, text, make_text)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: minimal_instance(properties[name], defs, f"{text} {name}", make_text) for name in properties}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        items = schema.get("items", {"type": "string"})
        if items.get("type") == "integer":  # positions, as in a mapping: 1, 2, 3, ... within the bounds
            low, high = items.get("minimum", 1), items.get("maximum", count)
            return [min(max(i + 1, low), high) for i in range(count)]
        return [minimal_instance(items, defs, f"{text} {i}", make_text) for i in range(count)]
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return schema.get("minimum", 1.0)
    if kind == "boolean":
        return True
    value = make_text(text) if make_text else text
    return value[: schema.get("maxLength", len(value))].ljust(schema.get("minLength", 1), "x")


def schema_reply(body: dict[str, Any]) -> str:
    """A valid JSON reply to a request with a json_schema response_format; plain text otherwise."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
        return json.dumps(minimal_instance(schema, text=schema.get("title", "reply")))
    if response_format.get("type") == "json_object":
        return "{}"
    return "a plain reply"


def with_injected_text(text: str, when: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], str]:
    """`schema_reply`, but string fields carry `text` in replies to requests matching `when`."""

    def reply(body: dict[str, Any]) -> str:
        if not when(body):
            return schema_reply(body)
        schema = body["response_format"]["json_schema"]["schema"]
        return json.dumps(minimal_instance(schema, text=text))

    return reply


def grounded_schema_reply(body: dict[str, Any]) -> str:
    """A valid JSON reply whose strings quote the request's last user message, the way a teacher quotes the
    student: synthetic data with a learnable pattern (template plus copying from the prompt), so a fine-tune on
    it can lower the loss on held-out rows, which constant minimal replies would not show."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return schema_reply(body)
    schema = response_format["json_schema"]["schema"]
    words = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "").split()

    def quote(path: str) -> str:
        start = sum(map(ord, path)) % max(1, len(words) - 6)
        return f"You wrote \"{' '.join(words[start: start + 6])}\"; check it against the text."

    return json.dumps(minimal_instance(schema, text="reply", make_text=quote))
