"""Sections of `sefl-ray annotate`: a blind human rating study and the questions it asks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from sefl_ray.config.schema import Field, StrictModel
from sefl_ray.layout import RunLayout


class QuestionConfig(StrictModel):
    """One question an annotator answers per item (see sefl_ray.annotate.questions for the default set)."""

    name: str = Field(
        decides="content", pattern=r"^[a-z][a-z0-9_]*$",
        description="Identifier: the `dimension` of exported ratings.",
    )
    kind: Literal["choice", "yesno", "score", "text"] = Field(
        decides="content",
        description="'choice': A, B or tie; 'yesno': yes or no; 'score': 1-5 for one side; 'text': free text.",
    )
    prompt: str = Field(decides="content", description="What the annotator reads.")
    required: bool = Field(
        True, decides="content",
        description="An item is complete when every required question is answered.",
    )
    side: Literal["A", "B"] | None = Field(
        None, decides="content",
        description="For 'score': the feedback the score is about.",
    )


class AnnotateConfig(StrictModel):
    """A blind human rating study of two or more systems' feedback: `sefl-ray annotate create/serve/export`."""

    enabled: bool = Field(
        False, decides="execution",
        description="In `pipeline`: create the study after infer and log the links.",
    )
    study_dir: str | None = Field(
        None, decides="execution",
        description="Folder of the study (database, links, export); None: "
                                  "RUN_DIR/annotate.",
    )
    db_path: str | None = Field(
        None, decides="execution",
        description="SQLite database of the study; None: STUDY_DIR/study.sqlite.",
    )
    inputs: list[str] = Field(
        decides="content", default_factory=list,
        description="System outputs: `infer` parquet files (the system is their folder's "
        "name) or CSV/JSONL with item_id, system, feedback [, prompt, assignment, submission, passage]; empty: "
        "every RUN_DIR/infer/*/outputs.parquet.",
    )
    context: str | None = Field(
        None, decides="content",
        description="Test set giving each item's assignment, student answer and source passage by id; None: "
        "infer.input, else RUN_DIR/export/hf (split infer.split). Items without one show the prompt.",
    )
    systems: list[str] = Field(
        decides="content", default_factory=list,
        description="Systems to compare (two or more); empty: all.",
    )
    judge_ratings: str | None = Field(
        None, decides="execution",
        description="Judge verdicts (long form) for the admin view's judge-vs-human agreement; None: "
        "RUN_DIR/judge/ratings.parquet when it exists.",
    )
    num_items: int | None = Field(
        None, decides="content", ge=1,
        description="Items in the study (seeded sample); None: all.",
    )
    annotators: list[str] = Field(
        decides="content", default_factory=lambda: ["annotator1", "annotator2", "annotator3"],
        description="Annotator names; each gets a personal link.",
    )
    overlap: int = Field(
        3, decides="content", ge=1,
        description="Annotators per item (at most the number of annotators).",
    )
    repeats: int = Field(
        0, decides="content", ge=0,
        description="Items per annotator shown a second time, A/B swapped, later in the "
                         "queue: each annotator's self-consistency.",
    )
    gold: str | None = Field(
        None, decides="content",
        description="Gold answers (CSV/JSONL: item_id, question, answer = a system name or tie): those "
        "items are shown to every annotator and scored, not exported.",
    )
    questions: list[QuestionConfig] | None = Field(
        None, decides="content",
        description="The questions per item; None: SEFL's (sense, accuracy, actionability, conciseness, "
        "tone, overall, comment).",
    )
    rubric: bool = Field(
        False, decides="content",
        description="Also ask the judge's 1-5 rubric per dimension, for A and for B.",
    )
    seed: int | None = Field(
        None, decides="content",
        description="Seed of the sample, the queues and the A/B orders; None: seed.",
    )
    host: str = Field("127.0.0.1", decides="execution", description="Address `annotate serve` listens on.")
    port: int = Field(8765, decides="execution", ge=1, le=65535)
    base_url: str | None = Field(
        None, decides="execution",
        description="Base of the printed links (behind a proxy); None: "
                                 "http://HOST:PORT.",
    )
    auto_advance: bool = Field(
        True, decides="execution",
        description="Keyboard: open the next item once every required question of "
                               "this one is answered.",
    )
    admin_bootstrap: int = Field(
        200, decides="execution", ge=0,
        description="Bootstrap resamples of the admin view's live agreement.",
    )

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
        return RunLayout(run_dir).study_dir(self.study_dir)

    def resolved_db_path(self, run_dir: str | Path) -> Path:
        return Path(self.db_path) if self.db_path else self.resolved_study_dir(run_dir) / "study.sqlite"

    def exported_ratings_path(self, run_dir: str | Path) -> Path:
        """Where `sefl-ray annotate export` writes the human ratings that `judge` picks up."""
        return self.resolved_study_dir(run_dir) / "export" / "ratings.jsonl"
