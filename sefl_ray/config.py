"""Typed configs for every stage, loaded from one YAML file with `--set a.b=c` overrides.

One root model (`SeflConfig`) holds a section per stage plus what they share (run dir, Ray, endpoints, retries), so
the same file drives `sefl-ray pipeline` and each stage alone. Every field has a default that works on a laptop;
unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sefl_ray.errors import ConfigError
from sefl_ray.llm.endpoint import EndpointConfig

logger = logging.getLogger(__name__)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(StrictModel):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://host:10001'); None: $RAY_ADDRESS, else a local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray; None: all of this machine's.")
    object_store_mb: int = Field(512, ge=64, description="Object store size of the local Ray, in MiB.")
    namespace: str = Field("sefl-ray", description="Ray namespace of the run's named actors.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Ray runtime_env for jobs on a cluster (pip, env_vars, working_dir…)."
    )


class RetryConfig(StrictModel):
    max_attempts: int = Field(6, ge=1, description="Attempts per call, the first included.")
    base_delay_s: float = Field(0.5, gt=0, description="First backoff delay; doubles each retry, with jitter.")
    max_delay_s: float = Field(30.0, gt=0, description="Cap on one backoff delay.")
    max_retry_after_s: float = Field(120.0, gt=0, description="Cap on a server's Retry-After that we honour.")


class ModelsConfig(StrictModel):
    prepare: list[str] = Field(
        default_factory=lambda: ["embedded:smollm2-135m"],
        description="Embedded models converted to HF folders before the stages run.",
    )


class SourcesConfig(StrictModel):
    path: str = Field(
        "builtin:edu_passages",
        description="Educational texts: a .jsonl/.json/.parquet file, a `datasets` folder (save_to_disk), "
        "'hf:NAME[:SPLIT]' for a Hub dataset, or 'builtin:edu_passages' (48 passages shipped with sefl-ray).",
    )
    text_column: str = Field("text", description="Column holding the passage (Fineweb-Edu: 'text').")
    id_column: str | None = Field("id", description="Column with a stable id; None or absent: a hash of the text.")
    min_chars: int = Field(200, ge=0, description="Skip passages shorter than this.")
    max_chars: int = Field(6000, ge=1, description="Skip passages longer than this.")
    limit: int | None = Field(None, ge=1, description="Use only the first N passages that pass the filters.")


class SynthConfig(StrictModel):
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    samples_per_source: int = Field(1, ge=1, description="Conversations per passage (different mistakes, seeds).")
    num_conversations: int | None = Field(None, ge=1, description="Cap on conversations; None: all planned.")
    teacher_endpoint: str | list[str] = Field(
        "local", description="Endpoint(s) that play the teacher; with several, conversations are spread over them."
    )
    student_endpoint: str | list[str] = Field(
        "local", description="Endpoint(s) that play the student; with several, conversations are spread over them."
    )
    preset: Literal["default", "sefl"] = Field("default", description="Prompt preset; 'sefl' follows the paper.")
    min_mistakes: int = Field(1, ge=1, description="Fewest deliberate mistakes per answer.")
    max_mistakes: int = Field(3, ge=1, description="Most deliberate mistakes per answer.")
    mistake_kinds: list[str] = Field(
        default_factory=lambda: ["factual", "reasoning", "calculation", "omission", "misreading"],
        description="Kinds of mistake sampled per row (see sefl_ray.synth.prompts.MISTAKE_DESCRIPTIONS).",
    )
    json_mode: Literal["json_schema", "json_object", "off"] = Field(
        "json_schema", description="How replies are constrained to JSON: a schema, any JSON object, or in words."
    )
    temperature: float = Field(0.7, ge=0, le=2)
    max_new_tokens: int = Field(512, ge=16, description="Per turn; the sefl preset uses 256.")
    max_turns: int = Field(5, ge=3, description="Agent turns per conversation, repair turns included.")
    concurrency: int = Field(32, ge=1, description="Conversations in flight across all actors.")
    num_actors: int = Field(2, ge=1, description="Ray Data actors running conversations (async, many per actor).")
    batch_size: int = Field(8, ge=1, description="Conversations per Ray Data block: the unit written to disk.")
    retry_failed: bool = Field(True, description="On a re-run, try failed rows again (ok rows are always kept).")
    budget_usd: float | None = Field(None, gt=0, description="Stop starting conversations past this cost.")
    budget_tokens: int | None = Field(None, gt=0, description="Stop starting conversations past this many tokens.")
    cache_calls: bool = Field(True, description="Cache answered calls on disk so a resumed run pays for none twice.")

    def endpoint_names(self, role: Literal["teacher", "student"]) -> list[str]:
        names = self.teacher_endpoint if role == "teacher" else self.student_endpoint
        return [names] if isinstance(names, str) else list(names)

    def content_fingerprint_fields(self) -> dict[str, Any]:
        """What decides a conversation's content (not how fast or how much we run): the row ids hash this."""
        return self.model_dump(
            mode="json",
            include={"sources", "preset", "min_mistakes", "max_mistakes", "mistake_kinds", "json_mode",
                     "temperature", "max_new_tokens", "max_turns"},
        )


class ExportConfig(StrictModel):
    valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the exported rows that go to the `valid` split (rounded)."
    )
    min_valid: int = Field(
        1, ge=1, description="Fewest rows in `valid`, whatever the fraction (`train` always keeps at least one)."
    )
    system_prompt: str | None = Field(
        None, description="System message of the `messages` column; None: the default feedback-giver instructions."
    )
    include_failed: bool = Field(
        False, description="Export failed rows too (with a `status` column); by default only `ok` rows are exported."
    )
    license: str = Field(
        "other",
        description="License id written in the dataset card, e.g. 'cc-by-4.0'. It depends on the terms of the "
        "models that wrote the data, hence 'other' until you say.",
    )


class LocalServeConfig(StrictModel):
    enabled: bool = Field(
        False, description="Start a Ray Serve app on this Ray before the stages that call endpoints (local demo)."
    )
    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP proxy.")
    app: dict[str, Any] = Field(
        default_factory=dict, description="Fields of sefl_ray.serve.app.ServeAppConfig (model, batching, ...)."
    )


class InferConfig(StrictModel):
    input: str | None = Field(
        None, description="Test set: a `datasets` folder (our export's `hf`), .parquet or .jsonl with `messages` "
        "or `prompt` (or `assignment` + `submission`); None: RUN_DIR/export/hf."
    )
    split: str = Field("valid", description="Split to read when `input` is a DatasetDict folder.")
    name: str = Field("base", description="Name of this system's outputs: RUN_DIR/infer/<name>/.")
    mode: Literal["endpoint", "local"] = Field(
        "endpoint", description="'endpoint': call an OpenAI-compatible endpoint; 'local': model actors on Ray."
    )
    endpoint: str = Field("local", description="Endpoint name in mode 'endpoint'.")
    model: str = Field("embedded:smollm2-135m", description="Model (name or folder) in mode 'local'.")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy, reproducible.")
    batch_size: int = Field(8, ge=1, description="Rows per Ray Data batch (one generate call in mode 'local').")
    num_actors: int = Field(1, ge=1, description="Model actors (local) or async caller actors (endpoint).")
    concurrency: int = Field(16, ge=1, description="Calls in flight per actor in mode 'endpoint'.")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")


class LoraSettings(StrictModel):
    enabled: bool = Field(False, description="Train a LoRA adapter (peft) instead of every weight.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters (Llama/Qwen names by default), or 'all-linear'.",
    )


class FsdpSettings(StrictModel):
    cpu_offload: bool = Field(False, description="Keep sharded parameters and optimizer state in CPU memory.")
    reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after forward (ZeRO-3-like); False keeps them (ZeRO-2-like)."
    )


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[2, 3] = Field(3, description="ZeRO stage: 2 shards optimizer and gradients, 3 also weights.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on the CPU.")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters on the CPU between uses.")
    config_file: str | None = Field(
        None, description="A DeepSpeed JSON of your own; batch sizes, precision and clipping are filled from this "
        "section where the file says 'auto' or omits them."
    )


class TrainConfig(StrictModel):
    """Supervised fine-tuning of a causal LM on feedback pairs with Ray Train."""

    model: str = Field(
        "embedded:smollm2-135m", description="Base model: 'embedded:<name>', a local HF folder, or a Hub id."
    )
    dataset: str | None = Field(
        None, description="Training data: our export folder or its `hf` folder, any `datasets` folder, .parquet or "
        ".jsonl with SEFL's columns (`prompt`/`completion`) or a `messages` column; None: RUN_DIR/export/hf."
    )
    train_split: str = Field("train", description="Split to train on when `dataset` is a DatasetDict.")
    valid_split: str | None = Field(
        "valid", description="Held-out split for eval loss; when missing, `valid_fraction` of train is held out."
    )
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out share when the data has no valid split.")
    max_seq_len: int = Field(1024, ge=16, description="Longer examples are cut at this length; one left with no feedback tokens is dropped.")
    packing: bool = Field(
        True, description="Pack short examples into full sequences; attention stays within each example."
    )
    attn_implementation: str = Field(
        "per_example_sdpa", description="Attention kernel in training: 'per_example_sdpa' runs causal sdpa on each "
        "packed example alone (sefl_ray.train.attention); or any transformers name: 'sdpa' (block-diagonal mask), "
        "'flash_attention_2', 'eager'."
    )
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = Field("ddp", description="How the model is spread over workers.")
    fsdp: FsdpSettings = Field(default_factory=FsdpSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto': bf16 mixed precision where the device supports it, else fp32."
    )
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None: epochs).")
    batch_size: int = Field(
        1, ge=1, description="Sequences per worker per micro-step (each `max_seq_len` tokens long when packing)."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (use ~1e-4..2e-4 with LoRA).")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine")
    max_grad_norm: float = Field(1.0, gt=0)
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on a GPU cluster).")
    use_gpu: bool = Field(False, description="One GPU per worker (CUDA or ROCm).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers: SPREAD puts them on different nodes where it can."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend: 'auto' is nccl with GPUs (RCCL on ROCm builds), gloo on CPU."
    )
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps checkpoints: a shared path or s3://…; None: RUN_DIR/train/ray."
    )
    checkpoint_every_steps: int = Field(50, ge=1, description="Sharded checkpoint every N optimizer steps (and at end).")
    num_checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="Worker failures tolerated; each restarts from the last checkpoint.")
    eval_at_start: bool = Field(True, description="Measure eval loss before the first step, as the baseline.")
    log_every_steps: int = Field(1, ge=1)
    merge: bool = Field(True, description="Merge the last checkpoint into RUN_DIR/train/merged when training ends.")


class JudgeConfig(StrictModel):
    """LLM judges over the outputs of two or more systems, aligned by item id."""

    inputs: list[str] = Field(
        default_factory=list,
        description="System outputs: `infer` parquet files (the system is their folder's name) or CSV/JSONL with "
        "item_id, prompt, system, feedback; empty: every RUN_DIR/infer/*/outputs.parquet.",
    )
    judges: list[str] = Field(default_factory=lambda: ["local"], description="Endpoint names, judged concurrently; "
                              "each names one judge, counted once in the majority.")
    mode: Literal["pairwise", "rubric", "both"] = Field("both")
    preset: Literal["default", "sefl"] = Field(
        "default", description="'default': JSON verdict with rationale + 7-dimension rubric; 'sefl': SEFL's "
        "protocol, one single-character A/B answer per criterion (accuracy, actionability, conciseness, tone)."
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_new_tokens: int = Field(256, ge=1, description="Tokens per judge answer (1 is enough for 'sefl').")
    concurrency: int = Field(32, ge=1, description="Judge calls in flight across all actors.")
    num_actors: int = Field(1, ge=1, description="Ray Data actors making judge calls (async, many per actor).")
    limit: int | None = Field(None, ge=1, description="Judge only the first N items.")
    n_bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for the 95 % CIs (0: none).")
    human_ratings: list[str] = Field(
        default_factory=list, description="Human ratings (long form) to compare the judges with in `agreement`."
    )


    @field_validator("judges")
    @classmethod
    def _judges_once(cls, judges: list[str]) -> list[str]:
        repeated = sorted({name for name in judges if judges.count(name) > 1})
        if repeated:
            raise ValueError(f"judge(s) {', '.join(repeated)} listed twice; list each endpoint once (a judge listed "
                             "twice would count twice in the majority)")
        return judges


class QuestionConfig(StrictModel):
    """One question an annotator answers per item (see sefl_ray.annotate.questions for the default set)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Identifier: the `dimension` of exported ratings.")
    kind: Literal["choice", "yesno", "score", "text"] = Field(
        description="'choice': A, B or tie; 'yesno': yes or no; 'score': 1-5 for one side; 'text': free text.")
    prompt: str = Field(description="What the annotator reads.")
    required: bool = Field(True, description="An item is complete when every required question is answered.")
    side: Literal["A", "B"] | None = Field(None, description="For 'score': the feedback the score is about.")


class AnnotateConfig(StrictModel):
    """A blind human rating study of two or more systems' feedback: `sefl-ray annotate create/serve/export`."""

    enabled: bool = Field(False, description="In `pipeline`: create the study after infer and log the links.")
    study_dir: str | None = Field(None, description="Folder of the study (database, links, export); None: "
                                  "RUN_DIR/annotate.")
    db_path: str | None = Field(None, description="SQLite database of the study; None: STUDY_DIR/study.sqlite.")
    inputs: list[str] = Field(
        default_factory=list, description="System outputs: `infer` parquet files (the system is their folder's "
        "name) or CSV/JSONL with item_id, system, feedback [, prompt, assignment, submission, passage]; empty: "
        "every RUN_DIR/infer/*/outputs.parquet.")
    context: str | None = Field(
        None, description="Test set giving each item's assignment, student answer and source passage by id; None: "
        "infer.input, else RUN_DIR/export/hf (split infer.split). Items without one show the prompt.")
    systems: list[str] = Field(default_factory=list, description="Systems to compare (two or more); empty: all.")
    judge_ratings: str | None = Field(
        None, description="Judge verdicts (long form) for the admin view's judge-vs-human agreement; None: "
        "RUN_DIR/judge/ratings.parquet when it exists.")
    num_items: int | None = Field(None, ge=1, description="Items in the study (seeded sample); None: all.")
    annotators: list[str] = Field(
        default_factory=lambda: ["annotator1", "annotator2", "annotator3"],
        description="Annotator names; each gets a personal link.")
    overlap: int = Field(3, ge=1, description="Annotators per item (at most the number of annotators).")
    repeats: int = Field(0, ge=0, description="Items per annotator shown a second time, A/B swapped, later in the "
                         "queue: each annotator's self-consistency.")
    gold: str | None = Field(
        None, description="Gold answers (CSV/JSONL: item_id, question, answer = a system name or tie): those "
        "items are shown to every annotator and scored, not exported.")
    questions: list[QuestionConfig] | None = Field(
        None, description="The questions per item; None: SEFL's (sense, accuracy, actionability, conciseness, "
        "tone, overall, comment).")
    rubric: bool = Field(False, description="Also ask the judge's 1-5 rubric per dimension, for A and for B.")
    seed: int | None = Field(None, description="Seed of the sample, the queues and the A/B orders; None: seed.")
    host: str = Field("127.0.0.1", description="Address `annotate serve` listens on.")
    port: int = Field(8765, ge=1, le=65535)
    base_url: str | None = Field(None, description="Base of the printed links (behind a proxy); None: "
                                 "http://HOST:PORT.")
    auto_advance: bool = Field(True, description="Keyboard: open the next item once every required question of "
                               "this one is answered.")
    admin_bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the admin view's live agreement.")

    @field_validator("annotators")
    @classmethod
    def _annotators_once(cls, annotators: list[str]) -> list[str]:
        repeated = sorted({name for name in annotators if annotators.count(name) > 1})
        if repeated:
            raise ValueError(f"annotator(s) {', '.join(repeated)} listed twice; give each annotator one name")
        if not annotators:
            raise ValueError("list at least one annotator")
        return annotators

    def resolved_study_dir(self, run_dir: str | Path) -> Path:
        return Path(self.study_dir) if self.study_dir else Path(run_dir) / "annotate"

    def resolved_db_path(self, run_dir: str | Path) -> Path:
        return Path(self.db_path) if self.db_path else self.resolved_study_dir(run_dir) / "study.sqlite"

    def exported_ratings_path(self, run_dir: str | Path) -> Path:
        """Where `sefl-ray annotate export` writes the human ratings that `judge` picks up."""
        return self.resolved_study_dir(run_dir) / "export" / "ratings.jsonl"


class SeflConfig(StrictModel):
    """The whole run: shared settings and one section per stage."""

    run_dir: str = Field(
        "runs/local", description="Where every stage writes its outputs: a local or mounted path (NFS, Lustre, a "
        "PVC); on a cluster, one every node sees. Object-store URIs work for train.storage_path only."
    )
    seed: int = Field(0, description="Seed for sampling, splits and training.")
    progress_interval_s: float = Field(
        5.0, gt=0, le=60, description="Seconds between progress updates of synth, infer and judge (done, failed, "
        "tokens, cost, ETA): a bar on a terminal, one log line per interval elsewhere.")
    ray: RayConfig = Field(default_factory=RayConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    endpoints: list[EndpointConfig] = Field(
        default_factory=list, description="OpenAI-compatible endpoints the stages may call, by name."
    )
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: LocalServeConfig = Field(default_factory=LocalServeConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names_unique(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [endpoint.name for endpoint in endpoints]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"endpoint name(s) {', '.join(repeated)} used twice; give each endpoint its own name")
        return endpoints

    @field_validator("run_dir")
    @classmethod
    def _run_dir_is_a_path(cls, run_dir: str) -> str:
        # pathlib would quietly turn "s3://bucket/run" into a local folder "s3:/bucket/run": refuse it instead.
        if "://" in run_dir:
            raise ValueError(f"{run_dir!r} is a URI; run_dir must be a local or mounted path (object storage is "
                             "supported for train.storage_path, Ray Train's checkpoints)")
        return run_dir

    def endpoint(self, name: str) -> EndpointConfig:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(e.name for e in self.endpoints) or "none"
        raise ConfigError(f"no endpoint named '{name}' in endpoints (known: {known})")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> SeflConfig:
    """Read YAML (or start from defaults when `path` is None), apply KEY=VALUE overrides, validate."""
    raw: dict[str, Any] = {} if path is None else _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    source = str(path) if path is not None else "config"
    try:
        return SeflConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe_validation_error(exc)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set ray.num_cpus=2), got '{override}'")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the dotted key, joined with '; ' so the CLI still prints one line."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif error["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


def config_fingerprint(section: BaseModel | dict[str, Any]) -> str:
    """Stable short hash of a config section: the resume and skip key of a stage's outputs."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_as_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_resolved_config(config: SeflConfig, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a stage's outputs. Holds env var names only, never key values."""
    out_path = Path(out_dir) / name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(config_as_yaml(config))
    return out_path


def log_resolved_config(config: SeflConfig, stage: str) -> None:
    logger.info("resolved config for %s:\n%s", stage, config_as_yaml(config))
