"""`RunLayout`: every path of a run dir, named once. Stages talk only through these files.

    RUN_DIR/manifest.json, config.yaml      the pipeline's record and the resolved config
    synth/    plan.jsonl, records/, summary.json, call_cache/
    gate/     records.parquet (the planned records with every gate's verdict), summary.json, call_cache/
    export/   hf/ (DatasetDict), export_summary.json, README.md (the card)
    train/    summary.json, metrics.jsonl, ray/, merged/, adapter/
    infer/    <system>/outputs.parquet, summary.json, config.yaml
    judge/    judgments.parquet, summary.json, ratings.parquet, agreement/agreement.json, call_cache/
    annotate/ study.sqlite, links.txt, export/ratings.jsonl   (annotate.study_dir moves the whole study)
    report/   report.html, report.md
This module imports nothing of sefl-ray's, so the config, the registry and every stage can use it. It names the
folders and the files one stage hands to another; what lives inside a stage's own folder (checkpoint shards, the
export's parquet copies, the study's links) is named by that stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    run_dir: Path

    def __init__(self, run_dir: str | Path):
        object.__setattr__(self, "run_dir", Path(run_dir))

    def stage_dir(self, stage: str) -> Path:
        """A stage's own folder; a stage added through the registry writes here too."""
        return self.run_dir / stage

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    # synth
    @property
    def synth_dir(self) -> Path:
        return self.stage_dir("synth")

    @property
    def synth_plan(self) -> Path:
        return self.synth_dir / "plan.jsonl"

    @property
    def synth_records(self) -> Path:
        return self.synth_dir / "records"

    @property
    def synth_summary(self) -> Path:
        return self.synth_dir / "summary.json"

    @property
    def synth_call_cache(self) -> Path:
        return self.synth_dir / "call_cache"

    # gate
    @property
    def gate_dir(self) -> Path:
        return self.stage_dir("gate")

    @property
    def gate_records(self) -> Path:
        return self.gate_dir / "records.parquet"

    @property
    def gate_summary(self) -> Path:
        return self.gate_dir / "summary.json"

    @property
    def gate_call_cache(self) -> Path:
        return self.gate_dir / "call_cache"

    # export
    @property
    def export_dir(self) -> Path:
        return self.stage_dir("export")

    @property
    def export_hf(self) -> Path:
        return self.export_dir / "hf"

    @property
    def export_summary(self) -> Path:
        return self.export_dir / "export_summary.json"

    # train
    @property
    def train_dir(self) -> Path:
        return self.stage_dir("train")

    @property
    def train_summary(self) -> Path:
        return self.train_dir / "summary.json"

    @property
    def train_metrics(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def train_merged(self) -> Path:
        return self.train_dir / "merged"

    @property
    def train_ray(self) -> Path:
        """Ray Train's run folders (checkpoints), unless `train.storage_path` points elsewhere."""
        return self.train_dir / "ray"

    # infer
    @property
    def infer_dir(self) -> Path:
        return self.stage_dir("infer")

    def infer_system_dir(self, system: str) -> Path:
        return self.infer_dir / system

    def infer_outputs(self, system: str) -> Path:
        return self.infer_system_dir(system) / "outputs.parquet"

    def infer_summary(self, system: str) -> Path:
        return self.infer_system_dir(system) / "summary.json"

    def all_infer_outputs(self) -> list[Path]:
        """Every system's outputs, by system name: what judge and annotate read when not told otherwise."""
        return sorted(self.infer_dir.glob("*/outputs.parquet"))

    # judge
    @property
    def judge_dir(self) -> Path:
        return self.stage_dir("judge")

    @property
    def judgments(self) -> Path:
        return self.judge_dir / "judgments.parquet"

    @property
    def judge_summary(self) -> Path:
        return self.judge_dir / "summary.json"

    @property
    def judge_ratings(self) -> Path:
        return self.judge_dir / "ratings.parquet"

    @property
    def judge_call_cache(self) -> Path:
        return self.judge_dir / "call_cache"

    @property
    def agreement_dir(self) -> Path:
        return self.judge_dir / "agreement"

    @property
    def agreement(self) -> Path:
        return self.agreement_dir / "agreement.json"

    # annotate (the study can live elsewhere: annotate.study_dir)
    def study_dir(self, override: str | None = None) -> Path:
        return Path(override) if override else self.stage_dir("annotate")

    # report
    @property
    def report_dir(self) -> Path:
        return self.stage_dir("report")

    @property
    def report_html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def report_md(self) -> Path:
        return self.report_dir / "report.md"
