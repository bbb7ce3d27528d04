"""The stage registry: one record per stage, read by the CLI, the pipeline, the manifest and the report.

A stage is a function `run_<stage>(config) -> artifact path(s)` in its own package (`sefl_ray/<stage>/run.py`),
reading and writing files of the run dir only (`sefl_ray.layout.RunLayout`). Its record says where that function
is (imported only when the stage runs, so `sefl-ray --help` loads no torch), which stage's files it reads, which
config sections decide its output (their fields' `decides` marks pick the fields that count), which endpoints it
calls, the numbers the manifest keeps, and the report parts it adds. The paths a stage returns are its artifacts:
the manifest records them and the pipeline runs the stage again when one is gone.

To add a stage: write `sefl_ray/<stage>/run.py`, add its section to `sefl_ray/config/` if it needs one, and add a
`Stage(...)` to `STAGES` below, in pipeline order. It then gets `sefl-ray <stage> CONFIG`, a place in `sefl-ray
pipeline` (skipped when its fingerprint and artifacts are current), a manifest record and, with `report=`, its own
part of the report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sefl_ray.config import SeflConfig, config_fingerprint, decided_by
from sefl_ray.errors import ConfigError
from sefl_ray.layout import RunLayout


@dataclass(frozen=True)
class ReportPart:
    id: str        # the part's anchor in report.html
    title: str
    builder: str   # "module:function(run_dir: Path) -> list[section]"


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: str | None                      # "module:function(config, **options)": `sefl-ray <name> CONFIG`
    pipeline_entry: str | None = None      # what the pipeline runs, when it differs from `entry`
    upstream: str | None = None            # the stage whose files this one reads
    sections: tuple[str, ...] = ()         # config sections whose content/scope fields decide the output
    exclude: frozenset[str] = frozenset()  # dotted fields the pipeline entry sets itself (not the user)
    seeded: bool = True                    # config.seed decides the output
    endpoints: Callable[[SeflConfig], list[str]] | None = None  # endpoint names the stage calls
    extra_inputs: str | None = None        # "module:function(config) -> dict": inputs beyond the config
    enabled: Callable[[SeflConfig], bool] | None = None  # None: always part of the pipeline
    numbers: str | None = None             # "module:function(layout) -> dict" for the manifest
    report: tuple[ReportPart, ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # boolean flags of the command: (name, help)
    description: str = ""

    def run(self, config: SeflConfig, *, pipeline: bool = False, **options: Any) -> Path | list[Path]:
        target = (self.pipeline_entry or self.entry) if pipeline else self.entry
        if target is None:
            raise ConfigError(f"stage {self.name} has no command of its own")
        return resolve(target)(config, **options)

    def is_enabled(self, config: SeflConfig) -> bool:
        return self.enabled is None or self.enabled(config)


def resolve(target: str) -> Callable[..., Any]:
    """`"package.module:function"` -> the function, imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


STAGES: list[Stage] = [
    Stage("models", "convert the embedded models the run names into HF folders, once", None,
          pipeline_entry="sefl_ray.models:prepare_run_models", sections=("models",), seeded=False),
    Stage("synth", "synthesize teacher/student feedback conversations (resumable)", "sefl_ray.synth.run:run_synth",
          sections=("synth",), endpoints=lambda config: config.synth.endpoint_names("teacher")
          + config.synth.endpoint_names("student"), extra_inputs="sefl_ray.synth.run:stage_inputs",
          numbers="sefl_ray.synth.run:manifest_numbers",
          report=(ReportPart("data", "Data", "sefl_ray.report.data:data_sections"),),
          description="Run teacher/student conversations on Ray Data; re-running resumes where the last run "
          "stopped."),
    Stage("gate", "quality gates on the synthesized records: format, near-duplicates, sense, coverage, giveaway",
          "sefl_ray.gate.run:run_gate", upstream="synth", sections=("gate",),
          endpoints=lambda config: [config.gate.endpoint] if config.gate.enabled and config.gate.llm_gates else [],
          numbers="sefl_ray.gate.run:manifest_numbers",
          report=(ReportPart("quality", "Data quality", "sefl_ray.report.quality:quality_sections"),),
          description="Rule on every record synth planned; a record that fails a gate is kept as `filtered` with "
          "the gate and the reason, and export leaves it out."),
    Stage("export", "turn the gated records into a SEFL-compatible HF DatasetDict", "sefl_ray.export.run:run_export",
          upstream="gate", sections=("export",), numbers="sefl_ray.export.run:manifest_numbers",
          description="Export the records that passed the gates as a Hugging Face DatasetDict (train/valid) with "
          "SEFL's columns and a card."),
    Stage("train", "fine-tune a causal LM on the exported pairs with Ray Train (+ merge)",
          "sefl_ray.train.run:run_train", pipeline_entry="sefl_ray.train.run:run_train_and_merge", upstream="export",
          sections=("train",), numbers="sefl_ray.train.run:manifest_numbers",
          report=(ReportPart("training", "Training", "sefl_ray.report.training:training_sections"),),
          description="Supervised fine-tuning with Ray Train (DDP, FSDP2 or DeepSpeed ZeRO; full or LoRA); running "
          "it again resumes an interrupted run from its last checkpoint."),
    Stage("infer", "generate feedback for a test set (local model actors or an endpoint)",
          "sefl_ray.infer.run:run_infer", pipeline_entry="sefl_ray.infer.run:run_base_and_tuned", upstream="train",
          sections=("infer",), exclude=frozenset({"infer.name", "infer.mode", "infer.model", "infer.endpoint"}),
          numbers="sefl_ray.infer.run:manifest_numbers",
          report=(ReportPart("inference", "Inference", "sefl_ray.report.inference:inference_sections"),),
          description="Batch inference on Ray Data: one output row per test row, failed rows kept with the "
          "reason."),
    Stage("annotate", "create the blind human rating study of the infer outputs and log its links", None,
          pipeline_entry="sefl_ray.annotate.study:run_annotate", upstream="infer", sections=("annotate",),
          enabled=lambda config: config.annotate.enabled),
    Stage("judge", "LLM judges: pairwise (both orders) and rubric scores, win rates", "sefl_ray.judge.run:run_judge",
          upstream="infer", sections=("judge",), endpoints=lambda config: list(config.judge.judges),
          numbers="sefl_ray.judge.run:manifest_numbers",
          report=(ReportPart("judges", "Judges", "sefl_ray.report.judges:judge_sections"),
                  ReportPart("calibration", "Calibration", "sefl_ray.report.calibration:calibration_part")),
          options=(("rescore", "re-parse the saved answers and rebuild the summary without calling any model"),),
          description="Judge every pair of systems on every shared item in both orders, and score each feedback on "
          "the rubric, with every judge in judge.judges at once; calls are cached, so a re-run costs nothing."),
    Stage("report", "one self-contained HTML report of the run", None,
          pipeline_entry="sefl_ray.report.run:run_report_stage", upstream="judge", seeded=False),
]


def stage_names() -> list[str]:
    return [stage.name for stage in STAGES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"no such stage: {name} (stages: {', '.join(stage_names())})")


def stage_inputs(stage: Stage, config: SeflConfig) -> dict[str, Any]:
    """What decides a stage's outputs: its sections' content and scope fields, the seed, the models of the
    endpoints it calls (and the run's own Serve app's model when that answers them), and any extra inputs."""
    inputs: dict[str, Any] = {}
    for section in stage.sections:
        relative = frozenset(key.split(".", 1)[1] for key in stage.exclude if key.startswith(f"{section}."))
        inputs[section] = decided_by(getattr(config, section), exclude=relative)
    if stage.seeded:
        inputs["seed"] = config.seed
    if stage.endpoints is not None:
        inputs["models"] = config.endpoint_models(stage.endpoints(config))
        if config.serve.enabled:
            inputs["served"] = decided_by(config.serve)
    if stage.extra_inputs:
        inputs.update(resolve(stage.extra_inputs)(config))
    return inputs


def stage_fingerprints(config: SeflConfig) -> dict[str, str]:
    """Each stage's fingerprint, chained: it includes the fingerprint of the stage it reads from."""
    fingerprints: dict[str, str] = {}
    for stage in STAGES:
        upstream = fingerprints.get(stage.upstream, "") if stage.upstream else ""
        fingerprints[stage.name] = config_fingerprint({"stage": stage.name, "inputs": stage_inputs(stage, config),
                                                       "upstream": upstream})
    return fingerprints


def stage_numbers(stage: Stage, run_dir: Path) -> dict[str, Any]:
    """Rows, tokens and cost of a finished stage, read from the summary file the stage itself wrote."""
    if stage.numbers is None:
        return {}
    try:
        return resolve(stage.numbers)(RunLayout(run_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a stage that wrote no summary (or an older one) still gets its timing recorded
