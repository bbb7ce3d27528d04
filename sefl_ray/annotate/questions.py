"""The questions an annotator answers per item, and the one check of an answer's value that the server applies.

The default set follows SEFL's human evaluation: does the assignment make sense (yes/no), then A, B or tie for
each of accuracy, actionability, conciseness and tone, an overall preference and an optional comment: six
required answers, one key each. `annotate.rubric` adds the judge's 1-5 rubric per dimension for each side.
"""

from __future__ import annotations

from sefl_ray.config import AnnotateConfig, QuestionConfig
from sefl_ray.errors import ConfigError
from sefl_ray.judge.prompts import RUBRIC, SEFL_CRITERIA

MAX_TEXT_CHARS = 5000
# What each kind accepts, in the order the page shows them, with the key that gives each value.
VALUES = {"choice": ("A", "B", "tie"), "yesno": ("yes", "no"), "score": ("1", "2", "3", "4", "5")}
KEYS = {"A": "a", "B": "b", "tie": "t", "yes": "y", "no": "n", **{str(n): str(n) for n in range(1, 6)}}


def default_questions() -> list[QuestionConfig]:
    sense = QuestionConfig(name="sense", kind="yesno", prompt="Does the assignment make sense?")
    criteria = [QuestionConfig(name=name, kind="choice", prompt=prompt)
                for name, prompt in SEFL_CRITERIA.items()]
    overall = QuestionConfig(name="overall", kind="choice", prompt="Overall, which feedback would you rather give "
                             "this student?")
    comment = QuestionConfig(name="comment", kind="text", prompt="Comment (optional)", required=False)
    return [sense, *criteria, overall, comment]


def rubric_questions() -> list[QuestionConfig]:
    questions = []
    for dimension, (low, mid, high) in RUBRIC.items():
        for side in ("A", "B"):
            questions.append(QuestionConfig(
                name=f"rubric_{dimension}_{side.lower()}", kind="score", side=side,
                prompt=f"Feedback {side}, {dimension.replace('_', ' ')}: 1 = {low}; 3 = {mid}; 5 = {high}"))
    return questions


def study_questions(settings: AnnotateConfig) -> list[QuestionConfig]:
    questions = list(settings.questions) if settings.questions is not None else default_questions()
    if settings.rubric:
        questions += rubric_questions()
    names = [question.name for question in questions]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"annotate.questions: {', '.join(repeated)} asked twice; give each question its own name")
    if not any(question.required for question in questions):
        raise ConfigError("annotate.questions: no required question; an item would be complete before any answer")
    for question in questions:
        if question.kind == "score" and question.side is None:
            raise ConfigError(f"annotate.questions: '{question.name}' is a score; say which feedback it rates "
                              "(side: A or B)")
    return questions


def check_value(question: QuestionConfig, value: object) -> str:
    """The stored form of `value`, or ValueError saying what the question accepts."""
    if question.kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"'{question.name}' takes text, got {type(value).__name__}")
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"'{question.name}' takes at most {MAX_TEXT_CHARS} characters, got {len(value)}")
        return value
    allowed = VALUES[question.kind]
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"'{question.name}' takes one of {', '.join(allowed)}, got {value!r}")
    return value
