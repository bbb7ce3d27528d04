"""The Judges part: what the LLM judges concluded and how far they can be trusted, from `judge/summary.json` and
the judge models in `judge/judgments.parquet`: win rates with CIs and length control, position consistency and
bias beside them, per-criterion and rubric scores, failures and cost, and a plain note when a judge is the
embedded 135M model (a smoke test of the machinery, not a judge of pedagogy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sefl_ray.layout import RunLayout
from sefl_ray.report import plots
from sefl_ray.report.sections import ci, embedded_note, fmt, not_run, read_json, section
from sefl_ray.usage import Usage


def judge_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    if not layout.judge_summary.exists():
        return [not_run("judge", layout.judge_summary, run_dir)]
    summary = read_json(layout.judge_summary)
    models = judge_models(layout.judgments)
    rates, position, rubric = summary["win_rates"], summary["position"], summary["rubric"]
    notes = embedded_note({f"judge `{judge}`": [model] for judge, model in models.items()})
    sections = [
        section("Judge models", notes or "The judges and the models behind them.",
                table=(["judge", "model"], [[j, m] for j, m in models.items()])),
        section("Win rates", "Both orders per pair; a position-inconsistent verdict is a tie; ties count half. 95 % "
                "bootstrap CIs over items; LC = length-controlled (AlpacaEval-style: the win rate at equal length).",
                table=(["judge", "A", "B", "n", "A wins", "B wins", "ties", "win rate A", "95 % CI", "LC win rate A"],
                       [[r["judge"], r["system_a"], r["system_b"], r["n"], r["wins_a"], r["wins_b"], r["ties"],
                         fmt(r["win_rate_a"]), ci(r["ci_low"], r["ci_high"]),
                         fmt(r["length_controlled_win_rate_a"])] for r in rates]),
                plot=plots.win_rates(rates) if rates else None),
        section("Position bias", "Consistency: share of items where both orders name the same winner. A-rate: share "
                "of non-tie answers that chose the first-shown feedback (0.5 is unbiased).",
                table=(["judge", "verdicts", "consistency", "A-rate", "tie rate"],
                       [[p["judge"], p["verdicts"], fmt(p["position_consistency"]), fmt(p["position_a_rate"]),
                         fmt(p["tie_rate"])] for p in position]),
                plot=plots.position(position) if position else None),
    ]
    if rates:
        sections.append(section("Win rate against length difference", "Win rate of system A beside the mean length "
                                "difference (characters, A − B).", plot=plots.win_rate_by_length(rates)))
    if summary.get("criteria"):
        sections.append(section("Per criterion", "Win rates per criterion (SEFL's preset asks one per criterion).",
                                table=(["judge", "A", "B", "criterion", "A wins", "B wins", "ties", "win rate A"],
                                       [[r["judge"], r["system_a"], r["system_b"], r["criterion"], r["wins_a"],
                                         r["wins_b"], r["ties"], fmt(r["win_rate_a"])] for r in summary["criteria"]])))
    if rubric:
        sections.append(section("Rubric scores", "Mean score 1–5 per dimension and system, with 95 % CIs.",
                                table=rubric_table(rubric), plot=plots.rubric(rubric)))
    calls = summary["calls"]
    # a summary written before the Usage record holds its tokens in `calls` and no cost rule: shown as n/a
    usage = Usage.from_dict(summary.get("usage") or calls)
    cost = usage.cost_text() if "usage" in summary else "n/a"
    failures = summary.get("failures") or []
    note = "Judge calls, tokens and cost (cached calls cost nothing)."
    if failures:
        note += " Failed calls: " + "; ".join(f"{count} x {reason}" for reason, count in failures) + "."
    sections.append(section("Cost", note, warning=bool(calls["failed"]),
                            table=(["calls", "ok", "failed", "cached", "prompt tokens", "completion tokens",
                                    "cost"],
                                   [[calls["total"], calls["ok"], calls["failed"], calls["cached"],
                                     usage.prompt_tokens, usage.completion_tokens, cost]])))
    return sections


def rubric_table(rubric: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """One row per judge and system, one column per dimension: `mean (CI)`."""
    dimensions = sorted({r["dimension"] for r in rubric})
    cells = {(r["judge"], r["system"], r["dimension"]): r for r in rubric}
    rows = []
    for judge, system in sorted({(r["judge"], r["system"]) for r in rubric}):
        row = [cells.get((judge, system, d)) for d in dimensions]
        rows.append([judge, system, max(r["n"] for r in row if r),
                     *(f"{fmt(r['mean'], 2)} ({ci(r['ci_low'], r['ci_high'], 2)})" if r else "" for r in row)])
    return ["judge", "system", "n", *dimensions], rows


def judge_models(judgments_path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    if not judgments_path.exists():
        return {}
    table = pq.read_table(judgments_path, columns=["judge", "model"]).to_pylist()
    return dict(sorted({(row["judge"], row["model"]) for row in table}))

