"""The report's Calibration part: how far the LLM judges can stand in for people, from `agreement.json` (see
`sefl_ray.judge.agreement`): each judge beside the human ceiling and against the human majority, the position and
length bias of every rater, the same per pair of systems, and kappa between every pair of raters.

Per dimension, the first section is titled "Calibration (<dimension>)"; it names every flagged judge in its note
and is then a warning. Score ratings have no leave-one-out calibration: their first section shows kappa against
the human majority alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sefl_ray.layout import RunLayout
from sefl_ray.report import plots
from sefl_ray.report.sections import ci, fmt, read_json, section


def calibration_sections(agreement: dict) -> list[dict[str, Any]]:
    """Sections for every dimension of `agreement` (the parsed agreement.json)."""
    sections = []
    for dimension, stats in agreement["dimensions"].items():
        flags = [f"⚠ {flag['message']}." for flag in agreement.get("flags", []) if flag["dimension"] == dimension]
        calibration = stats.get("calibration")
        if calibration is None:
            if "vs_human_majority" in stats:
                sections.append(_majority_section(dimension, stats["vs_human_majority"], flags))
        else:
            sections.append(_judges_section(dimension, calibration, flags))
            sections.append(_bias_section(dimension, calibration["bias"]))
            if calibration["by_system_pair"]:
                sections.append(_system_pair_section(dimension, calibration["by_system_pair"]))
        if stats.get("pairwise"):
            sections.append(_pairs_section(dimension, stats["pairwise"]))
    return sections


def _judges_section(dimension: str, calibration: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    ceiling = calibration["human_ceiling"]
    judges = calibration["judges"]
    if ceiling["value"] is None:
        about = f"No human ceiling: {ceiling['reason']}."
    else:
        about = (f"Human ceiling {fmt(ceiling['value'])} (95 % CI {ci(ceiling['ci_low'], ceiling['ci_high'])}): each "
                 "human's agreement with the mode of the other humans, averaged over the humans (AlpacaEval's "
                 "leave-one-out); a judge's LOO agreement is the same statistic with the judge in the left-out "
                 "human's place. κ and accuracy are against the majority of all humans; unanimous items are those "
                 "every human agreed on, split items have a majority that is not unanimous.")
    header = ["rater", "kind", "n", "LOO agreement", "95 % CI", "vs ceiling", "κ vs human majority", "95 % CI",
              "unanimous accuracy (n)", "split accuracy (n)", "flag"]
    rows = [[human["rater"], "human", human["n"], fmt(human["agreement"]), ci(human["ci_low"], human["ci_high"]),
             "", "", "", "", "", ""] for human in ceiling["raters"]]
    rows += [[judge["rater"], "judge", judge["n"], fmt(judge["loo_agreement"]), ci(judge["ci_low"], judge["ci_high"]),
              _signed(judge["vs_ceiling"]), fmt(judge["cohen_kappa"]),
              ci(judge["kappa_ci_low"], judge["kappa_ci_high"]), _accuracy(judge["unanimous"]),
              _accuracy(judge["split"]), (judge["flag"] or "").replace("_", " ")] for judge in judges]
    bars = [(human["rater"], human["agreement"], human["ci_low"], human["ci_high"]) for human in ceiling["raters"]]
    bars += [(judge["rater"], judge["loo_agreement"], judge["ci_low"], judge["ci_high"]) for judge in judges]
    bars = [bar for bar in bars if bar[1] is not None]
    return section(f"Calibration ({dimension})", " ".join([*flags, about]), warning=bool(flags),
                   table=(header, rows), plot=_agreement_plot(bars, ceiling["value"]) if bars else None)


def _majority_section(dimension: str, majority: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """Scores: each judge's (quadratic-weighted) κ and accuracy against the human majority."""
    about = majority["reason"] or "Each judge against the human majority (the modal score), κ quadratic-weighted."
    return section(f"Calibration ({dimension})", " ".join([*flags, about]), warning=bool(flags),
                   table=(["judge", "n", "κ vs human majority", "95 % CI", "accuracy", "95 % CI"],
                          [[r["rater"], r["n"], fmt(r["cohen_kappa"]), ci(r["ci_low"], r["ci_high"]),
                            fmt(r["accuracy"]), ci(r["accuracy_ci_low"], r["accuracy_ci_high"])]
                           for r in majority["raters"]]))


def _bias_section(dimension: str, bias: list[dict[str, Any]]) -> dict[str, Any]:
    header = ["rater", "kind", "first-position rate", "95 % CI", "n", "P(prefers longer)", "95 % CI", "n"]
    rows = []
    for entry in bias:
        cells = [entry["rater"], entry["kind"]]
        for key in ("first_position", "prefers_longer"):
            share = entry[key]
            value = fmt(share["value"]) if share["value"] is not None else f"n/a ({share['reason']})"
            cells += [value, ci(share["ci_low"], share["ci_high"]), share["n"]]
        rows.append(cells)
    plotted = [entry for entry in bias
               if entry["first_position"]["value"] is not None or entry["prefers_longer"]["value"] is not None]
    return section(f"Calibration ({dimension}): position and length bias",
                   "First-position rate: share of non-tie choices that picked the feedback shown first. "
                   "P(prefers longer): share of non-tie choices that picked the longer feedback (pairs of equal "
                   "length left out). 0.5 is unbiased; 95 % bootstrap CIs over the choices.",
                   table=(header, rows), plot=_bias_plot(plotted) if plotted else None)


def _system_pair_section(dimension: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    header = ["systems", "items", "human ceiling", "judge", "n", "κ vs human majority", "95 % CI", "accuracy"]
    rows = []
    for pair in pairs:
        systems = " vs ".join(pair["systems"])
        for judge in pair["judges"] or [None]:
            cells = ["", "", "", "", ""] if judge is None else [
                judge["rater"], judge["n"], fmt(judge["cohen_kappa"]), ci(judge["ci_low"], judge["ci_high"]),
                fmt(judge["accuracy"])]
            rows.append([systems, pair["n_items"], fmt(pair["human_ceiling"]), *cells])
    return section(f"Calibration ({dimension}): by system pair",
                   "The human ceiling and each judge against the human majority on the items of one pair of "
                   "systems only: a judge can be trustworthy on one pair and not on another.", table=(header, rows))


def _pairs_section(dimension: str, pairwise: list[dict[str, Any]]) -> dict[str, Any]:
    return section(f"Calibration ({dimension}): every pair of raters",
                   "Cohen's κ between every two raters on the items both rated, with 95 % bootstrap CIs.",
                   table=(["rater", "rater", "n", "κ", "95 % CI", "agreement"],
                          [[p["rater_a"], p["rater_b"], p["n"], fmt(p["cohen_kappa"]), ci(p["ci_low"], p["ci_high"]),
                            fmt(p["percent_agreement"])] for p in pairwise]),
                   plot=plots.kappa_heatmap(pairwise))


def _agreement_plot(bars: list[tuple[str, float, float | None, float | None]], ceiling: float | None) -> bytes:
    """LOO agreement of each human and judge with its CI, the ceiling as a line."""
    fig = plots.figure(6, 0.6 + 0.4 * len(bars))
    ax = fig.subplots()
    values = [value for _, value, _, _ in bars]
    errors = [[value - (low if low is not None else value) for _, value, low, _ in bars],
              [(high if high is not None else value) - value for _, value, _, high in bars]]
    ax.barh([name for name, *_ in bars], values, xerr=errors, color="#4c72b0", capsize=3)
    if ceiling is not None:
        ax.axvline(ceiling, color="#a00", linestyle="--", label="human ceiling")
        ax.legend(fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("leave-one-out agreement with the other humans' mode")
    return plots.png(fig)


def _bias_plot(bias: list[dict[str, Any]]) -> bytes:
    """First-position rate and P(prefers longer) per rater, with CIs, against 0.5."""
    fig = plots.figure(1.5 + 0.8 * len(bias), 3)
    ax = fig.subplots()
    for offset, key, label in ((-0.2, "first_position", "first position"), (0.2, "prefers_longer", "prefers longer")):
        shares = [entry[key] for entry in bias]
        values = [share["value"] if share["value"] is not None else 0.0 for share in shares]
        errors = [[value - (share["ci_low"] if share["ci_low"] is not None else value)
                   for value, share in zip(values, shares)],
                  [(share["ci_high"] if share["ci_high"] is not None else value) - value
                   for value, share in zip(values, shares)]]
        ax.bar([x + offset for x in range(len(bias))], values, 0.4, yerr=errors, capsize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle="--")
    ax.set_xticks(range(len(bias)), [entry["rater"] for entry in bias], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return plots.png(fig)


def _accuracy(block: dict[str, Any]) -> str:
    return f"{fmt(block['accuracy'])} ({block['n']})"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def calibration_part(run_dir: Path) -> list[dict[str, Any]]:
    """The judges against human ratings, from `judge/agreement/agreement.json`, when there are any."""
    agreement_path = RunLayout(run_dir).agreement
    if not agreement_path.exists():
        return [section("No human ratings", "No judge/agreement/agreement.json here: set `judge.human_ratings` (or "
                        "run `sefl-ray agreement`) to see how far each judge agrees with people.")]
    return calibration_sections(read_json(agreement_path))
