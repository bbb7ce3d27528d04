"""A gate's ruling on one record, in the shape `GATE_VERDICT_TYPE` stores, and the rulings that need no model.

The format gate checks what a parse or a chat template can leave in a field: lengths outside the configured
bounds, another language than the one asked for, role labels or chat tokens ("Teacher:", "<|im_end|>"), and JSON
debris (a field that is still a JSON object, or quotes its own keys).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from sefl_ray.config.gate import FormatGateConfig
from sefl_ray.gate.language import detect_language

FIELDS = ("assignment", "submission", "feedback")

_ROLE_TEXT = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id)\|>|\[/?INST\]|</?s>"
    r"|^\s*(?:teacher|student|assistant|user|system)\s*:|^\s*###\s*(?:assignment|answer|feedback)\b",
    re.IGNORECASE | re.MULTILINE)
_JSON_KEY = re.compile(r'"(?:assignment|submission|answer|feedback|errors|mistakes|items|content|role)"\s*:')
_JSON_START = re.compile(r'\s*[\[{]\s*["{\[]')  # `{"`, `[{`, `["`: a JSON value, not a bracketed word


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    reason: str | None = None      # why it failed, one line; None when it passed
    rationale: str | None = None   # the model's own words, for the model gates
    details: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["details"] = json.dumps(self.details) if self.details is not None else None
        return row


def format_verdict(record: dict[str, Any], settings: FormatGateConfig) -> Verdict:
    """The first format problem of the record's fields, or a pass."""
    for field in FIELDS:
        text = (record.get(field) or "").strip()
        low, high = settings.min_chars.get(field, 0), settings.max_chars.get(field)
        if len(text) < low:
            return Verdict("format", False, f"{field} has {len(text)} characters, fewer than {low}")
        if high is not None and len(text) > high:
            return Verdict("format", False, f"{field} has {len(text)} characters, more than {high}")
        if (match := _ROLE_TEXT.search(text)) is not None:
            return Verdict("format", False, f"{field} holds leftover role or template text: {match.group(0).strip()!r}")
        if _JSON_START.match(text) or _JSON_KEY.search(text):
            return Verdict("format", False, f"{field} holds JSON debris: {text[:40]!r}")
        wanted = record.get("language") or settings.language  # the language synth.quotas dealt, if it dealt one
        if wanted is not None:
            language = detect_language(text)
            if language is not None and language != wanted:
                return Verdict("format", False, f"{field} is written in '{language}', not '{wanted}'")
    return Verdict("format", True)
