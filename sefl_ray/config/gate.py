"""The `gate` section: which quality gates the synthesized records pass through before export, and their bounds."""

from __future__ import annotations

from pydantic import model_validator

from sefl_ray.config.schema import Field, StrictModel
from sefl_ray.config.sections import BATCH_DOC, CONCURRENCY_DOC

LLM_GATES = ("sense", "coverage", "giveaway")


class FormatGateConfig(StrictModel):
    """Checks that need no model: lengths, language, and text that a parse left behind."""

    enabled: bool = Field(True, decides="content", description="Run the format gate.")
    min_chars: dict[str, int] = Field(
        decides="content", default_factory=lambda: {"assignment": 20, "submission": 20, "feedback": 40},
        description="Fewest characters per field (assignment, submission, feedback).",
    )
    max_chars: dict[str, int] = Field(
        decides="content", default_factory=lambda: {"assignment": 2000, "submission": 4000, "feedback": 4000},
        description="Most characters per field.",
    )
    language: str | None = Field(
        "en", decides="content",
        description="The language every field must be written in (ISO 639-1: en, de, fr, es, nl, da, sv, it, "
        "pt), unless synth.quotas dealt the record another; None: not checked.",
    )


class DedupConfig(StrictModel):
    enabled: bool = Field(True, decides="content", description="Remove near-duplicate records.")
    fields: list[str] = Field(
        decides="content", default_factory=lambda: ["assignment", "feedback"],
        description="Record fields whose text, joined, two records must share to be near-duplicates.",
    )
    threshold: float = Field(
        0.7, decides="content", gt=0, lt=1,
        description="Jaccard similarity of the fields' character shingles above which two records are "
        "near-duplicates (estimated by MinHash LSH).",
    )
    num_perm: int = Field(128, decides="content", ge=16, le=1024, description="MinHash permutations.")
    shingle_chars: int = Field(5, decides="content", ge=2, le=16, description="Characters per shingle.")


class GateConfig(StrictModel):
    """Gates run in order format -> dedup -> sense -> coverage -> giveaway; a record stops at the first it fails,
    which saves the model calls of the gates after it."""

    enabled: bool = Field(
        True, decides="content",
        description="Run the gates; false: every ok record passes as it is (the stage still writes what export "
        "reads).",
    )
    llm_gates: list[str] = Field(
        decides="content", default_factory=lambda: list(LLM_GATES),
        description="The gates a model decides, in order: sense (the assignment makes sense and the passage "
        "answers it), coverage (each planned mistake is in the answer and each feedback item points at one), "
        "giveaway (the feedback does not hand over the corrected answer).",
    )
    endpoint: str = Field(
        "local", decides="execution",
        description="Endpoint that rules on the model gates (its model decides the verdicts: the fingerprint "
        "hashes it).",
    )
    format: FormatGateConfig = Field(decides="content", default_factory=FormatGateConfig)
    dedup: DedupConfig = Field(decides="content", default_factory=DedupConfig)
    temperature: float = Field(0.0, decides="content", ge=0, le=2)
    max_new_tokens: int = Field(
        320, decides="content", ge=16,
        description="Per verdict. The rationale is at most 200 characters (so at most 200 tokens): 320 leaves room "
        "for the JSON around it, so that no verdict is cut short.",
    )
    concurrency: int = Field(32, decides="execution", ge=1, description=f"Records in flight {CONCURRENCY_DOC}.")
    num_actors: int | None = Field(
        None, decides="execution", ge=1,
        description="Ray Data actors asking the gates; None: as few as the endpoint's max_concurrency allows.",
    )
    batch_size: int = Field(8, decides="execution", ge=1, description=BATCH_DOC)

    @model_validator(mode="after")
    def _known_gates(self) -> GateConfig:
        unknown = [gate for gate in self.llm_gates if gate not in LLM_GATES]
        if unknown or len(set(self.llm_gates)) != len(self.llm_gates):
            raise ValueError(f"gate.llm_gates: {self.llm_gates} must name each of {', '.join(LLM_GATES)} at most "
                             "once")
        return self
