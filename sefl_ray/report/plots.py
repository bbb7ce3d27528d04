"""The report's plots, each a function from plain numbers to PNG bytes (inlined into the page by `render.py`).

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global state, no GUI backend, nothing
left open between plots.
"""

from __future__ import annotations

import io
import math
from typing import Any


def figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def counts_bars(labels: list[str], series: dict[str, list[float]], *, ylabel: str) -> bytes:
    """Grouped bars: one group per label, one bar per series (e.g. mistakes sampled vs written per kind)."""
    fig = figure(max(5.0, 0.9 * len(labels) + 2), 3.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        ax.bar([x + index * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=20)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return png(fig)


def length_histograms(lengths: dict[str, list[int]], *, xlabel: str = "characters") -> bytes:
    """One histogram panel per text (assignment, answer, feedback)."""
    names = [name for name, values in lengths.items() if values] or list(lengths)
    fig = figure(3.2 * max(1, len(names)), 2.6)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        ax.hist(lengths[name] or [0], bins=min(20, max(1, len(lengths[name]))), color="#4c72b0")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("records")
    return png(fig)


def overlaid_histograms(lengths: dict[str, list[int]], *, xlabel: str) -> bytes:
    """Histograms of several systems on one axis (base vs tuned feedback lengths)."""
    fig = figure(6, 3)
    ax = fig.subplots()
    values = [v for series in lengths.values() for v in series] or [0]
    bins = min(20, max(2, len(set(values))))
    edges = [min(values) + i * ((max(values) - min(values)) or 1) / bins for i in range(bins + 1)]
    for name, series in lengths.items():
        ax.hist(series or [0], bins=edges, alpha=0.55, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    return png(fig)


def training_curves(steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> bytes:
    """Loss and eval loss, tokens/s per worker, learning rate, and MFU when any step has one, against the step."""
    panels = [("loss", None), ("tokens_per_s_per_worker", "tokens/s per worker"), ("lr", "learning rate")]
    if any(r.get("mfu") is not None for r in steps):
        panels.append(("mfu", "MFU"))
    columns = len(panels) if len(panels) <= 3 else 2
    rows = math.ceil(len(panels) / columns)
    fig = figure(4 * columns, 3 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, (key, title) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in steps if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label="train loss" if key == "loss"
                else title)
        if key == "loss":
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label="eval loss")
            ax.legend(fontsize=8)
        ax.set_title(title or "loss", fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return png(fig)


def win_rates(rates: list[dict]) -> bytes:
    fig = figure(7, 0.5 + 0.45 * len(rates))
    ax = fig.subplots()
    labels = [f"{r['judge']}: {r['system_a']} vs {r['system_b']}" for r in rates]
    values = [r["win_rate_a"] for r in rates]
    errors = [[v - (r["ci_low"] if r["ci_low"] is not None else v) for v, r in zip(values, rates)],
              [(r["ci_high"] if r["ci_high"] is not None else v) - v for v, r in zip(values, rates)]]
    ax.barh(labels, values, xerr=errors, color="#4c72b0", capsize=3)
    ax.axvline(0.5, color="grey", linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of system A (ties = ½)")
    return png(fig)


def position(position_stats: list[dict]) -> bytes:
    fig = figure(6, 3)
    ax = fig.subplots()
    judges = [p["judge"] for p in position_stats]
    xs = range(len(judges))
    ax.bar([x - 0.2 for x in xs], [p["position_consistency"] or 0 for p in position_stats], 0.4, label="consistency")
    ax.bar([x + 0.2 for x in xs], [p["position_a_rate"] or 0 for p in position_stats], 0.4, label="A-rate")
    ax.set_xticks(list(xs), judges)
    ax.set_ylim(0, 1)
    ax.legend()
    return png(fig)


def win_rate_by_length(rates: list[dict]) -> bytes:
    fig = figure(6, 3.5)
    ax = fig.subplots()
    for r in rates:
        ax.scatter(r["mean_length_diff_chars"], r["win_rate_a"], label=f"{r['judge']}: {r['system_a']}")
    ax.axhline(0.5, color="grey", linestyle="--")
    ax.set_xlabel("mean length difference A − B (characters)")
    ax.set_ylabel("win rate A")
    ax.legend(fontsize=7)
    return png(fig)


def rubric(rubric_means: list[dict]) -> bytes:
    fig = figure(8, 3.5)
    ax = fig.subplots()
    series = sorted({(r["judge"], r["system"]) for r in rubric_means})
    dimensions = sorted({r["dimension"] for r in rubric_means})
    width = 0.8 / max(1, len(series))
    for index, (judge, system) in enumerate(series):
        means = {r["dimension"]: r["mean"] for r in rubric_means if (r["judge"], r["system"]) == (judge, system)}
        ax.bar([d + index * width for d in range(len(dimensions))], [means.get(name, 0) for name in dimensions],
               width, label=f"{judge}: {system}")
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(dimensions))], dimensions, rotation=30)
    ax.set_ylim(0, 5)
    ax.legend(fontsize=7)
    return png(fig)


def kappa_heatmap(pairwise: list[dict]) -> bytes:
    raters = sorted({p["rater_a"] for p in pairwise} | {p["rater_b"] for p in pairwise})
    index = {name: i for i, name in enumerate(raters)}
    grid = [[1.0 if i == j else float("nan") for j in range(len(raters))] for i in range(len(raters))]
    for p in pairwise:
        value = p["cohen_kappa"] if p["cohen_kappa"] is not None else float("nan")
        grid[index[p["rater_a"]]][index[p["rater_b"]]] = grid[index[p["rater_b"]]][index[p["rater_a"]]] = value
    fig = figure(1.2 + 0.6 * len(raters), 1 + 0.5 * len(raters))
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(raters)), raters, rotation=45, ha="right")
    ax.set_yticks(range(len(raters)), raters)
    fig.colorbar(image, ax=ax, label="Cohen's κ")
    return png(fig)
