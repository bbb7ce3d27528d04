"""One teacher/student conversation with AutoGen agents: assignment, flawed answer, feedback, one record.

Each step is its own AssistantAgent with one job and one JSON schema; the teacher's two steps run on the teacher's
endpoint, the student's on the student's. A reply that does not validate gets one repair turn (the agent sees its
own bad reply and the validation error); after that, or when the endpoint layer gives up, the row is failed with
the reason and the raw text. Nothing here raises for a model's misbehaviour: every outcome is a record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from pydantic import BaseModel, ValidationError

from sefl_ray.llm.autogen_client import EndpointChatCompletionClient, json_schema_response_format
from sefl_ray.llm.client import EndpointCallFailed, EndpointClient
from sefl_ray.synth import prompts


@dataclass(frozen=True)
class ConversationPlan:
    """Everything that decides one conversation, fixed before it starts so a re-run asks the same questions."""

    id: str
    source_id: str
    source_text: str
    sample_index: int
    mistake_kinds: list[str]
    seed: int
    subject: str | None = None   # dealt by synth.quotas; None: not controlled
    level: str | None = None     # the grade band the assignment is written for
    language: str | None = None  # ISO 639-1 code every turn is written in


@dataclass(frozen=True)
class ConversationSettings:
    preset: str = "default"
    json_mode: str = "json_schema"
    temperature: float = 0.7
    max_new_tokens: int = 512
    max_turns: int = 5
    config_fingerprint: str = ""


class StepFailed(Exception):
    def __init__(self, reason: str, raw: str | None):
        super().__init__(reason)
        self.reason, self.raw = reason, raw


@dataclass
class _Transcript:
    messages: list[dict[str, str]] = field(default_factory=list)
    turns: int = 0


async def run_conversation(
    plan: ConversationPlan, teacher: EndpointClient, student: EndpointClient, settings: ConversationSettings
) -> dict[str, Any]:
    """Run the three steps and return a record (see `sefl_ray.data.records.RECORD_SCHEMA`), ok or failed."""
    transcript = _Transcript()
    teacher_calls: list = []
    student_calls: list = []

    async def ask(role: str, client: EndpointClient, system: str, step: prompts.Step, calls: list) -> BaseModel:
        model_client = EndpointChatCompletionClient(client, default_params=_params(settings, step, plan.seed))
        agent = AssistantAgent(role, model_client=model_client, system_message=system)
        try:
            return await _ask_with_repair(agent, role, step, settings, transcript)
        finally:
            calls.extend(model_client.calls)

    record = _base_record(plan, teacher.endpoint.model, student.endpoint.model, settings)
    budget = prompts.char_budget(settings.max_new_tokens)
    try:
        assignment = await ask(
            "teacher", teacher, prompts.TEACHER_SYSTEM,
            prompts.assignment_step(settings.preset, plan.source_text, budget, plan.level, plan.language),
            teacher_calls,
        )
        assignment_text = prompts.assignment_for_student(settings.preset, assignment)
        answer = await ask(
            "student", student, prompts.STUDENT_SYSTEM,
            prompts.student_step(settings.preset, assignment_text, plan.mistake_kinds, budget, plan.language),
            student_calls,
        )
        feedback = await ask(
            "teacher", teacher, prompts.TEACHER_SYSTEM,
            prompts.feedback_step(settings.preset, plan.source_text, assignment_text, answer.model_dump()["answer"],
                                  len(plan.mistake_kinds), budget, plan.language),
            teacher_calls,
        )
        parsed = prompts.parse_conversation(settings.preset, assignment, answer, feedback)
        record.update(
            assignment=parsed.assignment, submission=parsed.submission, errors=parsed.errors,
            feedback=parsed.feedback, feedback_items=parsed.feedback_items, status="ok",
        )
    except StepFailed as failure:
        record.update(status="failed", error=failure.reason, raw=failure.raw)
    except EndpointCallFailed as failure:
        record.update(status="failed", error=f"endpoint {failure.record.endpoint}: {failure.record.error}")
    record["messages"] = transcript.messages
    record["usage"] = [_role_usage("teacher", teacher, teacher_calls), _role_usage("student", student, student_calls)]
    record["finished_at"] = time.time()
    return record


async def _ask_with_repair(
    agent: AssistantAgent, role: str, step: prompts.Step, settings: ConversationSettings, transcript: _Transcript
) -> BaseModel:
    task, error = step.task, None
    for attempt in range(2):  # the first try and one repair turn
        if transcript.turns >= settings.max_turns:
            raise StepFailed(f"{role}: turn limit of {settings.max_turns} reached ({error})", None)
        transcript.turns += 1
        transcript.messages.append({"role": "instruction", "content": task})
        result = await agent.run(task=task)
        reply = str(result.messages[-1].content)
        transcript.messages.append({"role": role, "content": reply})
        try:
            return step.schema.model_validate_json(prompts.extract_json(reply))
        except ValidationError as exc:
            error = _describe(exc)
            task = prompts.repair_task(error)
            if attempt == 1:
                raise StepFailed(f"{role}: invalid JSON after a repair turn: {error}", reply) from None
    raise AssertionError("unreachable")


def _params(settings: ConversationSettings, step: prompts.Step, seed: int) -> dict[str, Any]:
    params: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_new_tokens, "seed": seed}
    if settings.json_mode == "json_schema":
        params["response_format"] = json_schema_response_format(step.schema)
    elif settings.json_mode == "json_object":
        params["response_format"] = {"type": "json_object"}
    return params


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "reply"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s))"


def _base_record(plan: ConversationPlan, teacher_model: str, student_model: str,
                 settings: ConversationSettings) -> dict[str, Any]:
    return {
        "id": plan.id, "source_id": plan.source_id, "source_text": plan.source_text,
        "sample_index": plan.sample_index, "preset": settings.preset, "assignment": None, "submission": None,
        "errors": [], "mistake_kinds": list(plan.mistake_kinds), "feedback": None, "feedback_items": [],
        "subject": plan.subject, "level": plan.level, "language": plan.language,
        "teacher_model": teacher_model, "student_model": student_model,
        "status": "failed", "error": None, "raw": None, "config_fingerprint": settings.config_fingerprint,
    }


def failed_record(plan: ConversationPlan, teacher_model: str, student_model: str, settings: ConversationSettings,
                  reason: str) -> dict[str, Any]:
    """The record of a conversation that raised something no step expected: failed, with why."""
    return {**_base_record(plan, teacher_model, student_model, settings), "error": reason, "messages": [],
            "usage": [], "finished_at": time.time()}


def _role_usage(role: str, client: EndpointClient, calls: list) -> dict[str, Any]:
    """What this attempt paid a role's endpoint: a call answered from the cache costs nothing, tokens included."""
    paid = [call for call in calls if not call.cached]
    costs = [call.cost_usd for call in calls]
    return {
        "role": role, "endpoint": client.endpoint.name, "model": client.endpoint.model,
        "calls": len(paid),
        "retries": sum(call.retries for call in calls),
        "prompt_tokens": sum(call.prompt_tokens for call in paid),
        "completion_tokens": sum(call.completion_tokens for call in paid),
        "cost_usd": None if any(cost is None for cost in costs) else float(sum(costs)),
    }
