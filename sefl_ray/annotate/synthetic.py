"""A synthetic run to rate: two systems' infer outputs and a test set with passages, written as `infer` and
`export` would. For the tests, the load benchmark, and trying the app without running the pipeline."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sefl_ray.data.sft import render_prompt
from sefl_ray.durable import write_jsonl, write_parquet


def write_synthetic_run(run_dir: str | Path, *, n_items: int = 10, systems: tuple[str, str] = ("base", "tuned"),
                        feedback: dict[tuple[str, int], str] | None = None) -> Path:
    """RUN_DIR/infer/<system>/outputs.parquet for each system and RUN_DIR/context.jsonl (id, assignment,
    submission, text); `feedback` overrides the text of (system, item). Returns the context file."""
    run_dir = Path(run_dir)
    context = []
    for index in range(n_items):
        assignment = f"Explain in two sentences why the moon has phases (question {index})."
        submission = f"The moon has phases because the earth's shadow covers it (answer {index})."
        context.append({"id": f"q{index:03d}", "assignment": assignment, "submission": submission,
                        "text": f"Passage {index}: the moon is lit by the sun; we see more or less of its lit half."})
    for rank, system in enumerate(systems):
        rows = []
        for index, row in enumerate(context):
            text = (feedback or {}).get((system, index)) or (
                f"Feedback style {rank + 1} on answer {index}: the shadow idea is a common mix-up; phases come from "
                f"how much of the lit half faces us." + " More detail." * rank)
            rows.append({"item_id": row["id"], "prompt": render_prompt(row["assignment"], row["submission"]),
                         "feedback": text, "system": None, "model": "synthetic", "prompt_tokens": 0,
                         "completion_tokens": 0, "latency_s": 0.0, "status": "ok", "error": None})
        write_parquet(run_dir / "infer" / system / "outputs.parquet", pa.Table.from_pylist(rows))
    return write_jsonl(run_dir / "context.jsonl", context)
