"""The SFT view of a record, one rendering shared by export, training and inference so they never drift apart.

The user turn is SEFL's own `### ASSIGNMENT:\\n…\\n\\n### ANSWER:\\n…` and the assistant turn `### FEEDBACK: …`, so
models fine-tuned here and SEFL's published models see the same text and can be compared.
"""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = (
    "You are a teacher giving feedback on a student's answer to an assignment. "
    "Read the assignment and the student's answer carefully. "
    "For each mistake in the answer, name the mistake, explain why it is wrong, and say how the student can fix it. "
    "Be specific, concise and encouraging. "
    "Do not give the full solution: guide the student towards correcting the answer themselves."
)


def render_prompt(assignment: str, submission: str) -> str:
    """The user turn: the assignment and the student's answer, in SEFL's rendering."""
    return f"### ASSIGNMENT:\n{assignment}\n\n### ANSWER:\n{submission}"


def render_completion(feedback: str) -> str:
    """The assistant turn: the feedback, in SEFL's rendering."""
    return f"### FEEDBACK: {feedback}"


def to_chat_messages(
    assignment: str,
    submission: str,
    feedback: str | None = None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> list[dict[str, str]]:
    """System, user and (when `feedback` is given, for training) assistant messages; without feedback, the
    messages are a generation prompt for inference."""
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": render_prompt(assignment, submission)},
    ]
    if feedback is not None:
        messages.append({"role": "assistant", "content": render_completion(feedback)})
    return messages
