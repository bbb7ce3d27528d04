"""The Training part: how the fine-tune went, from `train/metrics.jsonl` (one line per step and per evaluation)
and `train/summary.json`: loss and eval-loss curves, tokens/s per worker, learning rate, and MFU on a GPU.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sefl_ray.data.tables import read_jsonl
from sefl_ray.layout import RunLayout
from sefl_ray.report import plots
from sefl_ray.report.sections import blank, fmt, not_run, read_json, section


def training_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    metrics_path = layout.train_metrics
    if not metrics_path.exists():
        return [not_run("train", metrics_path, run_dir)]
    history = read_jsonl(metrics_path)
    steps = [r for r in history if "loss" in r]
    evals = [r for r in history if r.get("eval_loss") is not None]
    resumed = [r for r in history if "resumed_from" in r]
    summary_path = layout.train_summary
    summary = read_json(summary_path) if summary_path.exists() else {}
    data = summary.get("data") or {}
    mfus = [r["mfu"] for r in steps if r.get("mfu") is not None]
    # the first step pays for warm-up (allocation, compilation): the mean speed leaves it out, as train does
    speeds = [r["tokens_per_s_per_worker"] for r in steps[1:] or steps]
    note = ("Per optimizer step (loss is a per-token mean over every micro-batch and worker); eval loss on the "
            "held-out split at the start and after each epoch. ")
    note += (f"MFU: mean {fmt(statistics.mean(mfus))} of the GPU's bf16 peak." if mfus else
             "MFU: not measured (on CPU, or without bf16, there is no peak to compare with).")
    if resumed:
        at = ", ".join(str(r["step"]) for r in resumed)
        note += f" Resumed from a checkpoint {len(resumed)} time(s), at step(s) {at}."
    rows = [[len(steps), blank(data.get("train_examples")), blank(data.get("train_tokens")),
             fmt(steps[-1]["loss"]) if steps else "n/a", fmt(evals[0]["eval_loss"]) if evals else "n/a",
             fmt(evals[-1]["eval_loss"]) if evals else "n/a", fmt(statistics.mean(speeds), 0) if speeds else "n/a",
             steps[-1]["lr"] if steps else "n/a", fmt(statistics.mean(mfus)) if mfus else "n/a"]]
    header = ["steps", "train examples", "train tokens", "final loss", "first eval loss", "final eval loss",
              "tokens/s per worker (mean)", "final lr", "MFU (mean)"]
    return [section("Fine-tune", note, table=(header, rows),
                    plot=plots.training_curves(steps, evals) if steps else None)]
