"""Controlled sampling: synth's plan meets the declared quotas over subject, grade band, language, number and kinds
of mistakes (within ±2 % on 2,000 conversations: dealt exactly, to within one conversation), the prompts say what
was dealt, the records carry it, and the summary and the dataset card show target against achieved."""

from __future__ import annotations

import json

import pytest

from sefl_ray.config import load_config
from sefl_ray.data.quotas import quota_counts
from sefl_ray.errors import ConfigError
from sefl_ray.synth.run import plan_conversations, synth_fingerprint

QUOTAS = [
    "synth.quotas.subject={biology: 0.25, history: 0.25, mathematics: 0.5}",
    "synth.quotas.level={primary: 0.3, secondary: 0.5, university: 0.2}",
    "synth.quotas.language={en: 0.8, de: 0.2}",
    "synth.quotas.num_mistakes={1: 0.5, 2: 0.3, 3: 0.2}",
    "synth.quotas.mistake_kinds={factual: 0.4, reasoning: 0.3, calculation: 0.2, omission: 0.1}",
]


def quota_config(*overrides: str):
    return load_config(None, ["endpoints=[{name: local, model: m}]", *overrides])


def test_quotas_hold_within_two_percent_on_2000_planned_conversations():
    config = quota_config("synth.num_conversations=2000", *QUOTAS)
    plans = plan_conversations(config, synth_fingerprint(config))
    assert len(plans) == 2000 and len({plan["id"] for plan in plans}) == 2000
    quotas = config.synth.quotas
    mistakes = [kind for plan in plans for kind in plan["mistake_kinds"]]
    observed = {
        "subject": {value: sum(plan["subject"] == value for plan in plans) / 2000 for value in quotas.subject},
        "level": {value: sum(plan["level"] == value for plan in plans) / 2000 for value in quotas.level},
        "language": {value: sum(plan["language"] == value for plan in plans) / 2000 for value in quotas.language},
        "num_mistakes": {count: sum(len(plan["mistake_kinds"]) == count for plan in plans) / 2000
                         for count in quotas.num_mistakes},
        "mistake_kinds": {kind: mistakes.count(kind) / len(mistakes) for kind in quotas.mistake_kinds},
    }
    for dimension, shares in observed.items():
        for value, share in shares.items():
            assert abs(share - getattr(quotas, dimension)[value]) <= 0.02, (dimension, value, share)
            # dealt, not drawn: every count is within one conversation (one mistake) of its share
            total = len(mistakes) if dimension == "mistake_kinds" else 2000
            assert abs(share * total - getattr(quotas, dimension)[value] * total) < 1.0001, (dimension, value)
    assert all(len(set(plan["mistake_kinds"])) == len(plan["mistake_kinds"]) for plan in plans)
    # each subject's conversations come from that subject's passages, spread over all of them
    biology = [plan for plan in plans if plan["subject"] == "biology"]
    assert {plan["source_id"].split("-")[0] for plan in biology} == {"biology"}
    assert len({plan["source_id"] for plan in biology}) == 4
    # the same config plans the same rows; other quotas plan other rows
    assert plan_conversations(config, synth_fingerprint(config)) == plans
    other = quota_config("synth.num_conversations=2000", *QUOTAS[:-1])
    assert not {plan["id"] for plan in plan_conversations(other, synth_fingerprint(other))} & {p["id"] for p in plans}


def test_largest_remainder_counts_add_up_and_stay_within_one():
    for total in (1, 7, 10, 333, 2000):
        counts = quota_counts({"a": 0.5, "b": 0.3, "c": 0.2}, total)
        assert sum(counts.values()) == total
        assert all(abs(counts[v] - share * total) < 1 for v, share in {"a": 0.5, "b": 0.3, "c": 0.2}.items())


def test_bad_quotas_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"synth.quotas.level: shares must be positive and add up to 1"):
        quota_config("synth.quotas.level={a: 0.5, b: 0.4}")
    config = quota_config("synth.quotas.subject={biology: 1.0}")
    with pytest.raises(ConfigError, match="set synth.num_conversations"):
        plan_conversations(config, "f")
    config = quota_config("synth.num_conversations=10", "synth.quotas.subject={astrology: 1.0}")
    with pytest.raises(ConfigError, match="no passage has subject astrology"):
        plan_conversations(config, "f")


def test_synth_asks_for_what_was_dealt_and_reports_target_against_achieved(ray_session, tmp_path):
    from sefl_ray.export.run import run_export
    from sefl_ray.gate.run import run_gate
    from sefl_ray.layout import RunLayout
    from sefl_ray.synth.run import run_synth
    from sefl_ray.testing.loopback import LoopbackServer
    from sefl_ray.testing.schema_replies import grounded_schema_reply

    with LoopbackServer(replies=grounded_schema_reply) as server:
        config = load_config(None, [
            f"run_dir={tmp_path}", f"endpoints=[{{name: loop, model: loop-model, base_url: '{server.base_url}'}}]",
            "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=10",
            "synth.num_actors=1", "synth.quotas.language={en: 0.5, de: 0.5}",
            "synth.quotas.level={primary: 0.5, university: 0.5}", "gate.enabled=false",
            "export.valid_fraction=0.2"])
        run_synth(config)
        prompts = [request.body["messages"][-1]["content"] for request in server.requests]
    german = [prompt for prompt in prompts if "Write in German." in prompt]
    assert len(german) == 15  # 5 conversations x 3 turns
    assert sum("The student is at the university level" in prompt for prompt in prompts) == 5
    layout = RunLayout(tmp_path)
    summary = json.loads(layout.synth_summary.read_text())
    assert summary["quotas"]["planned"]["language"] == {"en": {"target": 0.5, "count": 5, "achieved": 0.5},
                                                        "de": {"target": 0.5, "count": 5, "achieved": 0.5}}
    assert summary["quotas"]["ok"]["level"]["primary"]["count"] == 5
    run_gate(config)
    from sefl_ray.report.quality import quality_sections

    sampling = next(part for part in quality_sections(tmp_path) if part["title"] == "Sampling")
    assert ["language", "de", "0.500", "0.500", "0.500"] in sampling["table"][1]
    run_export(config)
    card = (layout.export_dir / "README.md").read_text()
    assert "## Sampling" in card and "| language | de | 50.0% | 50.0% | 5 |" in card
