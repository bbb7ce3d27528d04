"""`sefl-ray report RUN_DIR`: one self-contained HTML page (plots inlined as PNG data URIs, no scripts, no links
out of the run dir) and a markdown summary, from the judge stage's summary and, when human ratings were given, the
agreement. When the pipeline made the run, the report opens with its stages (from `manifest.json`) and links it.

It says how far the judges can be trusted next to what they concluded: position consistency and bias beside the
win rates, κ against the human majority with a warning under 0.4, and a plain note when a judge is the embedded
135M model (a smoke test of the machinery, not a judge of pedagogy).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from sefl_ray.errors import InputNotFoundError

logger = logging.getLogger(__name__)

KAPPA_WARNING = 0.4


def run_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    judge_dir = run_dir / "judge"
    summary_path = judge_dir / "summary.json"
    if not summary_path.exists():
        raise InputNotFoundError(f"no judge results in {run_dir} ({summary_path} is missing): run `sefl-ray judge`")
    summary = json.loads(summary_path.read_text())
    agreement_path = judge_dir / "agreement" / "agreement.json"
    agreement = json.loads(agreement_path.read_text()) if agreement_path.exists() else None
    models = _judge_models(judge_dir)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    sections = run_sections(run_dir) + build_sections(summary, agreement, models)
    (report_dir / "report.html").write_text(render_html(sections, run_dir))
    (report_dir / "report.md").write_text(render_markdown(sections, run_dir))
    logger.info("report: %s", report_dir / "report.html")
    return report_dir / "report.html"


def run_sections(run_dir: Path) -> list[dict[str, Any]]:
    """The stages of the run as the manifest recorded them; none when the run was not made by the pipeline."""
    from sefl_ray.manifest import read_manifest
    from sefl_ray.pipeline import STAGE_NAMES

    stages = read_manifest(run_dir).get("stages", {})
    if not stages:
        return []
    rows = []
    for name in STAGE_NAMES:
        record = stages.get(name)
        if record is None or name == "report":
            continue
        commit = (record.get("environment") or {}).get("git_commit") or ""
        rows.append([name, record.get("status"), *(_blank(record.get(key)) for key in
                     ("elapsed_s", "rows", "tokens", "cost_usd")), commit[:12]])
    return [{"title": "Run", "note": "Each stage as manifest.json records it (resolved config, fingerprints, "
             "versions and artifact paths are there too).",
             "table": (["stage", "status", "seconds", "rows", "tokens", "cost (USD)", "git commit"], rows)}]


def _blank(value: Any) -> Any:
    return "" if value is None else value


def build_sections(summary: dict, agreement: dict | None, models: dict[str, str]) -> list[dict[str, Any]]:
    """Each section: a title, a note, an optional table (header + rows) and an optional plot (PNG bytes)."""
    sections = []
    notes = [f"Judge `{judge}` is `{model}`: a 135M model is a smoke-test judge of the machinery, not of feedback "
             "quality." for judge, model in models.items() if model.startswith("embedded:")]
    sections.append({"title": "Judges", "note": " ".join(notes) or "Judges and the models behind them.",
                     "table": (["judge", "model"], [[j, m] for j, m in models.items()])})
    rates = summary["win_rates"]
    sections.append({
        "title": "Win rates", "note": "Both orders per pair; a position-inconsistent verdict is a tie; ties count "
        "half. 95 % bootstrap CIs over items; LC = length-controlled (AlpacaEval-style).",
        "table": (["judge", "A", "B", "n", "A wins", "B wins", "ties", "win rate A", "95 % CI", "LC win rate A"],
                  [[r["judge"], r["system_a"], r["system_b"], r["n"], r["wins_a"], r["wins_b"], r["ties"],
                    _f(r["win_rate_a"]), f"{_f(r['ci_low'])}–{_f(r['ci_high'])}",
                    _f(r["length_controlled_win_rate_a"])] for r in rates]),
        "plot": _win_rate_plot(rates) if rates else None,
    })
    position = summary["position"]
    sections.append({
        "title": "Position bias", "note": "Consistency: share of items where both orders name the same winner. "
        "A-rate: share of non-tie answers that chose the first-shown feedback (0.5 is unbiased).",
        "table": (["judge", "verdicts", "consistency", "A-rate", "tie rate"],
                  [[p["judge"], p["verdicts"], _f(p["position_consistency"]), _f(p["position_a_rate"]),
                    _f(p["tie_rate"])] for p in position]),
        "plot": _position_plot(position) if position else None,
    })
    if rates:
        sections.append({"title": "Win rate against length difference",
                         "note": "Win rate of system A beside the mean length difference (characters, A − B).",
                         "plot": _length_plot(rates)})
    if summary["rubric"]:
        sections.append({
            "title": "Rubric scores", "note": "Mean score 1–5 per dimension and system, with 95 % CIs.",
            "table": (["judge", "system", "dimension", "n", "mean", "95 % CI"],
                      [[r["judge"], r["system"], r["dimension"], r["n"], _f(r["mean"]),
                        f"{_f(r['ci_low'])}–{_f(r['ci_high'])}"] for r in summary["rubric"]]),
            "plot": _rubric_plot(summary["rubric"]),
        })
    if agreement:
        sections.extend(_agreement_sections(agreement))
    calls = summary["calls"]
    sections.append({"title": "Cost", "note": "Judge calls, tokens and cost (cached calls cost nothing).",
                     "table": (["calls", "ok", "failed", "cached", "prompt tokens", "completion tokens", "cost USD"],
                               [[calls["total"], calls["ok"], calls["failed"], calls["cached"],
                                 calls["prompt_tokens"], calls["completion_tokens"], _f(calls["cost_usd"])]])})
    return sections


def _agreement_sections(agreement: dict) -> list[dict[str, Any]]:
    sections = []
    for dimension, stats in agreement["dimensions"].items():
        majority = stats["vs_human_majority"]["raters"]
        warnings = [f"⚠ {r['rater']}: κ = {_f(r['cohen_kappa'])} vs the human majority, below {KAPPA_WARNING}: "
                    "do not trust its verdicts without human review." for r in majority
                    if r["cohen_kappa"] is None or r["cohen_kappa"] < KAPPA_WARNING]
        sections.append({
            "title": f"Agreement with humans ({dimension})",
            "note": " ".join(warnings) or "Every judge reaches κ ≥ 0.4 against the human majority.",
            "warning": bool(warnings),
            "table": (["judge", "n", "κ vs human majority", "95 % CI", "accuracy"],
                      [[r["rater"], r["n"], _f(r["cohen_kappa"]), f"{_f(r['ci_low'])}–{_f(r['ci_high'])}",
                        _f(r["accuracy"])] for r in majority]),
            "plot": _kappa_heatmap(stats["pairwise"]) if stats["pairwise"] else None,
        })
    return sections


def render_html(sections: list[dict[str, Any]], run_dir: Path) -> str:
    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section['title'])}</h2>")
        css = ' class="warning"' if section.get("warning") else ""
        body.append(f"<p{css}>{html.escape(section['note'])}</p>")
        if section.get("table"):
            header, rows = section["table"]
            cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
            lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><tr>{cells}</tr>{lines}</table>")
        if section.get("plot"):
            data = base64.b64encode(section["plot"]).decode()
            body.append(f'<img alt="{html.escape(section["title"])}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}.warning{color:#a00;font-weight:bold}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>sefl-ray report</title>"
            f"<style>{style}</style></head><body><h1>sefl-ray report: {html.escape(str(run_dir))}</h1>"
            f"{_links_html(run_dir)}"
            f"{''.join(body)}</body></html>")


def _run_files(run_dir: Path) -> list[str]:
    """The run's own record files that exist, linked relative to report/ (the report never links outside)."""
    return [name for name in ("manifest.json", "config.yaml") if (run_dir / name).exists()]


def _links_html(run_dir: Path) -> str:
    links = " · ".join(f'<a href="../{name}">{name}</a>' for name in _run_files(run_dir))
    return f"<p>{links}</p>" if links else ""


def render_markdown(sections: list[dict[str, Any]], run_dir: Path) -> str:
    links = " · ".join(f"[{name}](../{name})" for name in _run_files(run_dir))
    lines = [f"# sefl-ray report: {run_dir}", "", links, ""] if links else [f"# sefl-ray report: {run_dir}", ""]
    for section in sections:
        lines += [f"## {section['title']}", "", section["note"], ""]
        if section.get("table"):
            header, rows = section["table"]
            lines += ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]
    return "\n".join(lines)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def _win_rate_plot(rates: list[dict]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rates)))
    labels = [f"{r['judge']}: {r['system_a']} vs {r['system_b']}" for r in rates]
    values = [r["win_rate_a"] for r in rates]
    errors = [[v - (r["ci_low"] if r["ci_low"] is not None else v) for v, r in zip(values, rates)],
              [(r["ci_high"] if r["ci_high"] is not None else v) - v for v, r in zip(values, rates)]]
    ax.barh(labels, values, xerr=errors, color="#4c72b0", capsize=3)
    ax.axvline(0.5, color="grey", linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of system A (ties = ½)")
    return _png(fig)


def _position_plot(position: list[dict]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3))
    judges = [p["judge"] for p in position]
    xs = range(len(judges))
    ax.bar([x - 0.2 for x in xs], [p["position_consistency"] or 0 for p in position], 0.4, label="consistency")
    ax.bar([x + 0.2 for x in xs], [p["position_a_rate"] or 0 for p in position], 0.4, label="A-rate")
    ax.set_xticks(list(xs), judges)
    ax.set_ylim(0, 1)
    ax.legend()
    return _png(fig)


def _length_plot(rates: list[dict]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rates:
        ax.scatter(r["mean_length_diff_chars"], r["win_rate_a"], label=f"{r['judge']}: {r['system_a']}")
    ax.axhline(0.5, color="grey", linestyle="--")
    ax.set_xlabel("mean length difference A − B (characters)")
    ax.set_ylabel("win rate A")
    ax.legend(fontsize=7)
    return _png(fig)


def _rubric_plot(rubric: list[dict]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    series = sorted({(r["judge"], r["system"]) for r in rubric})
    dimensions = sorted({r["dimension"] for r in rubric})
    width = 0.8 / max(1, len(series))
    for index, (judge, system) in enumerate(series):
        means = {r["dimension"]: r["mean"] for r in rubric if (r["judge"], r["system"]) == (judge, system)}
        ax.bar([d + index * width for d in range(len(dimensions))], [means.get(name, 0) for name in dimensions],
               width, label=f"{judge}: {system}")
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(dimensions))], dimensions, rotation=30)
    ax.set_ylim(0, 5)
    ax.legend(fontsize=7)
    return _png(fig)


def _kappa_heatmap(pairwise: list[dict]) -> bytes:
    plt = _figure()
    raters = sorted({p["rater_a"] for p in pairwise} | {p["rater_b"] for p in pairwise})
    index = {name: i for i, name in enumerate(raters)}
    grid = [[1.0 if i == j else float("nan") for j in range(len(raters))] for i in range(len(raters))]
    for p in pairwise:
        value = p["cohen_kappa"] if p["cohen_kappa"] is not None else float("nan")
        grid[index[p["rater_a"]]][index[p["rater_b"]]] = grid[index[p["rater_b"]]][index[p["rater_a"]]] = value
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(raters), 1 + 0.5 * len(raters)))
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(raters)), raters, rotation=45, ha="right")
    ax.set_yticks(range(len(raters)), raters)
    fig.colorbar(image, ax=ax, label="Cohen's κ")
    return _png(fig)


def _judge_models(judge_dir: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    path = judge_dir / "judgments.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["judge", "model"]).to_pylist()
    return dict(sorted({(row["judge"], row["model"]) for row in table}))


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
