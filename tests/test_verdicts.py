"""Reading judges' answers: every answer in the table gives the verdict it states, or fails; no prose becomes a
verdict it does not state, and no answer crashes the parser."""

from __future__ import annotations

import json

import pytest

from sefl_ray.judge.prompts import RUBRIC, parse_choice, parse_scores

FAILED = "failed"
LONG_RATIONALE = ("Feedback A names the misread date and Feedback B names it too. A is more detailed about the "
                  "second mistake, while B is warmer and shorter. " * 30)

VERDICTS = [
    # structured output first
    ('{"rationale": "clearer", "verdict": "B"}', "B"),
    ('{"verdict": "a", "rationale": "x"}', "A"),
    ('{"verdict": "Tie", "rationale": "same"}', "tie"),
    ('{"verdict": "Feedback B", "rationale": "x"}', "B"),
    ('{"rationale": "Feedback B is better.", "verdict": "A or B"}', FAILED),
    ('{"rationale": "Feedback B is better."}', FAILED),   # a JSON answer without its verdict is not searched
    ('{"verdict": "C"}', FAILED),
    ('{"verdict": null}', FAILED),
    ('"B"', "B"),
    ('```json\n{"verdict": "tie", "rationale": "same"}\n```', "tie"),
    ('Here is my judgment:\n```\n{"verdict": "A", "rationale": "names the mistake"}\n```', "A"),
    ('{"rationale": "B explains the fix", "verdict": "B"', "B"),          # cut short, the verdict still stated
    # bare answers, in any case
    ("A", "A"),
    (" b ", "B"),
    ("a", "A"),
    ("B.", "B"),
    ("tie", "tie"),
    ("TIE", "tie"),
    ("**B**", "B"),
    ("`A`", "A"),
    # articles are not verdicts
    ("Feedback B is better: a clearer explanation.", "B"),
    ("The answer is a tie.", "tie"),
    ("It's a tie.", "tie"),
    ("This is a good answer.", FAILED),
    ("a clearer explanation wins.", FAILED),
    ("My answer is a clearer one.", FAILED),
    ("Answer: A clear case of rambling.", FAILED),
    ("My answer is a for-now answer, as is.", FAILED),
    ("The choice is a because of the tone.", FAILED),
    # labelled verdicts, markdown, other punctuation
    ("After comparing, my verdict: B.", "B"),
    ("**Verdict:** **A**", "A"),
    ("## Verdict\nB", "B"),
    ("Verdict：Ｂ", "B"),                       # full-width colon and letter
    ("Verdict : « B »", "B"),
    ("Réponse finale — verdict : A.", "A"),
    ("Winner = feedback_b", "B"),
    ("verdict: b", "B"),
    # negation and both letters
    ("Verdict: not A", FAILED),
    ("I would not prefer A.", FAILED),
    ("I don't prefer B", FAILED),
    ("Verdict: A/B", FAILED),
    ("Answer: A or B, hard to say.", FAILED),
    ("A and B are both fine.", FAILED),
    ("Feedback A is better at tone, but Feedback B is better at accuracy.", FAILED),
    ("Both have merits.", FAILED),
    ("Neither.", FAILED),
    # a verdict after a long rationale; a labelled verdict outranks the rationale's phrases
    (LONG_RATIONALE + "\n\nFeedback B is better.", "B"),
    (LONG_RATIONALE + "Feedback A is better at detail.\n\nFinal verdict: B", "B"),
    (LONG_RATIONALE, FAILED),
    ("There is no doubt: B is better.", "B"),
    ("I prefer Feedback A because it names the mistake.", "A"),
    ("The better feedback is B.", "B"),
    ("B wins.", "B"),
    ("DNA is better understood now.", FAILED),    # a capital A inside a word
    # hostile input
    ("[" * 10000, FAILED),
    ("{" * 10000, FAILED),
    ('{"verdict": ' * 2000, FAILED),
    ("", FAILED),
    ("\ud800", FAILED),                           # a lone surrogate
]


@pytest.mark.parametrize(("answer", "expected"), VERDICTS, ids=[f"{i:02d}" for i in range(len(VERDICTS))])
def test_each_answer_gives_the_verdict_it_states_or_fails(answer, expected):
    if expected == FAILED:
        with pytest.raises(ValueError):
            parse_choice(answer)
    else:
        assert parse_choice(answer)[0] == expected


def test_the_table_covers_enough_answers_and_keeps_rationales():
    assert len(VERDICTS) >= 40
    assert parse_choice('{"rationale": "names the date", "verdict": "B"}') == ("B", "names the date")
    choice, rationale = parse_choice("Feedback B is better: a clearer explanation.")
    assert (choice, rationale) == ("B", "Feedback B is better: a clearer explanation.")


def _scores(**changes) -> str:
    scores = {"rationale": "ok", **{name: 3 for name in RUBRIC}, **changes}
    return json.dumps({name: value for name, value in scores.items() if value is not _MISSING})


_MISSING = object()
SCORES = [
    (_scores(), 3),
    (_scores(tone=5, diagnosis=1), 3),
    ("```json\n" + _scores() + "\n```", 3),
    (_scores(tone=0), FAILED),
    (_scores(tone=6), FAILED),
    (_scores(tone=-1), FAILED),
    (_scores(tone=4.5), FAILED),
    (_scores(tone="4"), FAILED),
    (_scores(tone=True), FAILED),
    (_scores(tone=None), FAILED),
    (_scores(tone=_MISSING), FAILED),
    ("Diagnosis: 4, tone: 5", FAILED),
    ("[" * 10000, FAILED),
    ("", FAILED),
]


@pytest.mark.parametrize(("answer", "expected_grounding"), SCORES, ids=[f"{i:02d}" for i in range(len(SCORES))])
def test_rubric_scores_validate_or_fail_never_default(answer, expected_grounding):
    if expected_grounding == FAILED:
        with pytest.raises(ValueError):
            parse_scores(answer)
    else:
        scores, _ = parse_scores(answer)
        assert set(scores) == set(RUBRIC) and scores["grounding"] == expected_grounding
