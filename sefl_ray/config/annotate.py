"""Sections of `sefl-ray annotate`: a blind human rating study and the questions it asks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from sefl_ray.config.schema import Field, StrictModel
from sefl_ray.layout import RunLayout


class QuestionConfig(StrictModel):
    """One question an annotator answers per item (see sefl_ray.annotate.questions for the default set)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Identifier: the `dimension` of exported ratings.", decides="content")
    kind: Literal["choice", "yesno", "score", "text"] = Field(
        description="'choice': A, B or tie; 'yesno': yes or no; 'score': 1-5 for one side; 'text': free text.", decides="content")
    prompt: str = Field(description="What the annotator reads.", decides="content")
    required: bool = Field(True, description="An item is complete when every required question is answered.", decides="content")
    side: Literal["A", "B"] | None = Field(None, description="For 'score': the feedback the score is about.", decides="content")


class AnnotateConfig(StrictModel):
    """A blind human rating study of two or more systems' feedback: `sefl-ray annotate create/serve/export`."""

    enabled: bool = Field(False, description="In `pipeline`: create the study after infer and log the links.", decides="execution")
    study_dir: str | None = Field(None, description="Folder of the study (database, links, export); None: "
                                  "RUN_DIR/annotate.", decides="execution")
    db_path: str | None = Field(None, description="SQLite database of the study; None: STUDY_DIR/study.sqlite.", decides="execution")
    inputs: list[str] = Field(
        default_factory=list, description="System outputs: `infer` parquet files (the system is their folder's "
        "name) or CSV/JSONL with item_id, system, feedback [, prompt, assignment, submission, passage]; empty: "
        "every RUN_DIR/infer/*/outputs.parquet.", decides="content")
    context: str | None = Field(
        None, description="Test set giving each item's assignment, student answer and source passage by id; None: "
        "infer.input, else RUN_DIR/export/hf (split infer.split). Items without one show the prompt.", decides="content")
    systems: list[str] = Field(default_factory=list, description="Systems to compare (two or more); empty: all.", decides="content")
    judge_ratings: str | None = Field(
        None, description="Judge verdicts (long form) for the admin view's judge-vs-human agreement; None: "
        "RUN_DIR/judge/ratings.parquet when it exists.", decides="execution")
    num_items: int | None = Field(None, ge=1, description="Items in the study (seeded sample); None: all.", decides="content")
    annotators: list[str] = Field(
        default_factory=lambda: ["annotator1", "annotator2", "annotator3"],
        description="Annotator names; each gets a personal link.", decides="content")
    overlap: int = Field(3, ge=1, description="Annotators per item (at most the number of annotators).", decides="content")
    repeats: int = Field(0, ge=0, description="Items per annotator shown a second time, A/B swapped, later in the "
                         "queue: each annotator's self-consistency.", decides="content")
    gold: str | None = Field(
        None, description="Gold answers (CSV/JSONL: item_id, question, answer = a system name or tie): those "
        "items are shown to every annotator and scored, not exported.", decides="content")
    questions: list[QuestionConfig] | None = Field(
        None, description="The questions per item; None: SEFL's (sense, accuracy, actionability, conciseness, "
        "tone, overall, comment).", decides="content")
    rubric: bool = Field(False, description="Also ask the judge's 1-5 rubric per dimension, for A and for B.", decides="content")
    seed: int | None = Field(None, description="Seed of the sample, the queues and the A/B orders; None: seed.", decides="content")
    host: str = Field("127.0.0.1", description="Address `annotate serve` listens on.", decides="execution")
    port: int = Field(8765, ge=1, le=65535, decides="execution")
    base_url: str | None = Field(None, description="Base of the printed links (behind a proxy); None: "
                                 "http://HOST:PORT.", decides="execution")
    auto_advance: bool = Field(True, description="Keyboard: open the next item once every required question of "
                               "this one is answered.", decides="execution")
    admin_bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the admin view's live agreement.", decides="execution")

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
