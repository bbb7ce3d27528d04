"""One cost rule in every output: a run whose teacher, one infer system and one judge have a price and whose
student, other system and other judge have none reports, everywhere, the sum of the known costs plus the number of
calls without a price (never a silent 0, never a None that hides the priced half)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sefl_ray.config import load_config
from sefl_ray.export.run import run_export
from sefl_ray.gate.run import run_gate
from sefl_ray.infer.run import run_infer
from sefl_ray.judge.run import run_judge
from sefl_ray.layout import RunLayout
from sefl_ray.report.run import run_report
from sefl_ray.stages import get_stage, stage_numbers
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.schema_replies import grounded_schema_reply
from sefl_ray.usage import Usage

PRICE_IN, PRICE_OUT = 1000.0, 2000.0  # USD per 1M tokens: large, so every cost shows at 4 decimals


def priced(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * PRICE_IN + completion_tokens * PRICE_OUT) / 1_000_000


@pytest.mark.slow
def test_priced_and_unpriced_endpoints_get_one_cost_rule_in_synth_infer_judge_card_manifest_and_report(
        ray_session, tmp_path):
    with LoopbackServer(replies=grounded_schema_reply) as server:
        endpoints = (f"[{{name: paid, model: paid-model, base_url: '{server.base_url}', "
                     f"price_input_per_1m: {PRICE_IN}, price_output_per_1m: {PRICE_OUT}}}, "
                     f"{{name: free, model: free-model, base_url: '{server.base_url}'}}]")
        config = load_config(None, [
            f"run_dir={tmp_path}", f"endpoints={endpoints}", "retry.base_delay_s=0.01", "synth.num_conversations=4",
            "synth.teacher_endpoint=paid", "synth.student_endpoint=free", "synth.num_actors=1",
            "export.valid_fraction=0.5", "infer.max_new_tokens=8", "judge.judges=[paid, free]", "judge.mode=both",
            "judge.n_bootstrap=0", "gate.enabled=false"])
        layout = RunLayout(tmp_path)
        run_synth(config)
        run_gate(config)
        run_export(config)
        for name in ("paid", "free"):
            run_infer(config.model_copy(update={"infer": config.infer.model_copy(
                update={"name": name, "endpoint": name, "mode": "endpoint"})}))
        run_judge(config)
    run_report(tmp_path)

    # synth: the teacher's calls priced, the student's counted as unpriced
    synth = json.loads(layout.synth_summary.read_text())
    roles = {key.split(":")[0]: Usage.from_dict(entry) for key, entry in synth["usage_by_role"].items()}
    teacher, student = roles["teacher"], roles["student"]
    assert teacher.calls > 0 and teacher.unpriced_calls == 0
    assert teacher.cost_usd == pytest.approx(priced(teacher.prompt_tokens, teacher.completion_tokens))
    assert student.calls > 0 and student.cost_usd == 0 and student.unpriced_calls == student.calls
    total = Usage.from_dict(synth["usage"])
    assert total.cost_usd == pytest.approx(teacher.cost_usd) and total.unpriced_calls == student.calls
    assert stage_numbers(get_stage("synth"), tmp_path)["unpriced_calls"] == student.calls
    assert stage_numbers(get_stage("synth"), tmp_path)["cost_usd"] == pytest.approx(teacher.cost_usd, abs=1e-6)

    # the dataset card: the same numbers, the same words
    card = (layout.export_dir / "README.md").read_text()
    assert f"| {teacher.cost_text()} |" in card and "| unpriced |" in card
    assert teacher.cost_text().startswith("$") and teacher.cost_usd > 0

    # infer: each system's summary; the stage's numbers add them, priced and unpriced apart
    rows = {name: pq.read_table(layout.infer_outputs(name)).to_pylist() for name in ("paid", "free")}
    paid_cost = sum(priced(r["prompt_tokens"], r["completion_tokens"]) for r in rows["paid"])
    paid = Usage.from_dict(json.loads(layout.infer_summary("paid").read_text())["usage"])
    free = Usage.from_dict(json.loads(layout.infer_summary("free").read_text())["usage"])
    assert paid.cost_usd == pytest.approx(paid_cost) and paid_cost > 0 and paid.unpriced_calls == 0
    assert free.cost_usd == 0 and free.unpriced_calls == len(rows["free"]) > 0
    infer_numbers = stage_numbers(get_stage("infer"), tmp_path)
    assert infer_numbers["cost_usd"] == pytest.approx(paid_cost, abs=1e-6)
    assert infer_numbers["unpriced_calls"] == len(rows["free"])

    # judge: the paid judge's calls summed, the free judge's counted
    judgments = pq.read_table(layout.judgments).to_pylist()
    judge_cost = sum(priced(r["prompt_tokens"], r["completion_tokens"]) for r in judgments if r["judge"] == "paid")
    judge = Usage.from_dict(json.loads(layout.judge_summary.read_text())["usage"])
    assert judge.cost_usd == pytest.approx(judge_cost) and judge_cost > 0
    assert judge.unpriced_calls == sum(r["judge"] == "free" for r in judgments) > 0
    assert stage_numbers(get_stage("judge"), tmp_path)["unpriced_calls"] == judge.unpriced_calls

    # the report shows each of them the one way Usage writes it
    html = layout.report_html.read_text()
    for usage in (teacher, judge):
        assert usage.cost_text() in html
    assert f"+ {judge.unpriced_calls} unpriced calls" in judge.cost_text()
