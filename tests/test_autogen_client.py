"""AutoGen agents and teams over our endpoint layer, against real loopback HTTP servers: what the vendor sees, what
the agent gets back, usage per call, and how a call that fails for good surfaces through an agent and a team."""

import asyncio

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import StructuredMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool
from PIL import Image as PILImage
from pydantic import BaseModel

from sefl_ray.config import RetryConfig
from sefl_ray.llm.autogen_client import EndpointChatCompletionClient
from sefl_ray.llm.client import EndpointCallFailed, EndpointClient
from sefl_ray.llm.endpoint import EndpointConfig
from sefl_ray.testing.loopback import LoopbackConfig, LoopbackServer

FAST_RETRY = RetryConfig(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)


class Verdict(BaseModel):
    score: int
    reason: str


def client_for(server, name="loop", retry=FAST_RETRY, **kwargs):
    endpoint = EndpointConfig(name=name, model=f"{name}-model", base_url=server.base_url)
    return EndpointChatCompletionClient(EndpointClient(endpoint, retry), **kwargs)


async def run_then_close(client, coroutine):
    try:
        return await coroutine
    finally:
        await client.endpoint_client.close()


def test_agent_answers_through_the_endpoint_layer():
    server = LoopbackServer(replies=["Photosynthesis turns light into sugar."])
    with server:
        client = client_for(server, default_params={"temperature": 0.2, "max_tokens": 64})
        agent = AssistantAgent("teacher", model_client=client, system_message="You are a patient teacher.")
        result = asyncio.run(run_then_close(client, agent.run(task="Explain photosynthesis.")))

    assert result.messages[-1].source == "teacher"
    assert result.messages[-1].content == "Photosynthesis turns light into sugar."
    [request] = server.requests
    assert request.body["model"] == "loop-model"
    assert request.body["messages"] == [
        {"role": "system", "content": "You are a patient teacher."},
        {"role": "user", "content": "Explain photosynthesis."},
    ]
    assert request.body["temperature"] == 0.2 and request.body["max_tokens"] == 64
    assert "response_format" not in request.body
    assert [record.status for record in client.calls] == ["ok"]


def test_json_output_sends_response_format_and_agent_parses_structured_output():
    reply = '{"score": 4, "reason": "names each mistake"}'
    with LoopbackServer(replies=[reply]) as server:
        client = client_for(server, default_params={"temperature": 0.0})

        async def scenario():
            schema_result = await client.create(
                [UserMessage(content="Rate it.", source="user")], json_output=Verdict,
                extra_create_args={"temperature": 0.5},
            )
            json_result = await client.create([UserMessage(content="Rate it.", source="user")], json_output=True)
            agent = AssistantAgent("judge", model_client=client, output_content_type=Verdict)
            return schema_result, json_result, await agent.run(task="Rate this feedback.")

        schema_result, json_result, agent_result = asyncio.run(run_then_close(client, scenario()))

    assert schema_result.content == reply and json_result.content == reply
    schema_body, json_body, agent_body = (request.body for request in server.requests)
    assert schema_body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "schema": Verdict.model_json_schema(), "strict": False},
    }
    assert schema_body["temperature"] == 0.5  # a call's extra_create_args override the client's default_params
    assert json_body["response_format"] == {"type": "json_object"} and json_body["temperature"] == 0.0
    assert agent_body["response_format"]["json_schema"]["name"] == "Verdict"
    message = agent_result.messages[-1]
    assert isinstance(message, StructuredMessage)
    assert message.content == Verdict(score=4, reason="names each mistake")


def test_usage_is_summed_and_one_record_kept_per_call(loopback):
    client = client_for(loopback)

    async def scenario():
        first = await client.create([UserMessage(content="one two three", source="user")])
        chunks = [chunk async for chunk in client.create_stream([UserMessage(content="four five", source="user")])]
        return first, chunks

    first, chunks = asyncio.run(run_then_close(client, scenario()))

    assert first.finish_reason == "stop" and first.cached is False and first.content == "echo: one two three"
    streamed_text, streamed_result = chunks
    assert streamed_text == "echo: four five" and streamed_result.content == streamed_text
    assert len(client.calls) == 2 == loopback.count()
    total = client.total_usage()
    assert total.prompt_tokens == sum(record.prompt_tokens for record in client.calls) == 3 + 2
    assert total.completion_tokens == first.usage.completion_tokens + streamed_result.usage.completion_tokens
    assert client.actual_usage() == total


def test_failed_call_propagates_unchanged_from_an_agent_and_is_recorded():
    with LoopbackServer(LoopbackConfig(rate_500=1.0)) as server:
        client = client_for(server, retry=RetryConfig(max_attempts=2, base_delay_s=0.01))
        agent = AssistantAgent("teacher", model_client=client)
        with pytest.raises(EndpointCallFailed) as failure:
            asyncio.run(run_then_close(client, agent.run(task="Explain photosynthesis.")))

    record = client.calls[-1]
    assert failure.value.record is record
    assert record.status == "failed" and "HTTP 500" in record.error and record.attempts == 2
    assert server.count() == 2 == server.count("500")


def test_failed_call_inside_a_team_surfaces_as_runtime_error_but_the_record_keeps_the_reason():
    with LoopbackServer(LoopbackConfig(rate_500=1.0)) as server:
        client = client_for(server)
        team = RoundRobinGroupChat(
            [AssistantAgent("teacher", model_client=client)], termination_condition=MaxMessageTermination(2)
        )
        with pytest.raises(RuntimeError) as failure:
            asyncio.run(run_then_close(client, team.run(task="Explain photosynthesis.")))

    assert not isinstance(failure.value, EndpointCallFailed)  # AutoGen keeps only the type's name, as text
    assert str(failure.value).startswith("EndpointCallFailed: loop: HTTP 500")
    assert client.calls[-1].status == "failed" and "HTTP 500" in client.calls[-1].error


def test_teacher_and_student_alternate_over_two_endpoints():
    question = "What does a plant need for photosynthesis?"
    answer = "Only water, nothing else."
    loopback_teacher = LoopbackServer(replies=[question])
    with loopback_teacher, LoopbackServer(replies=[answer]) as loopback_student:
        teacher_client = client_for(loopback_teacher, name="teacher-endpoint")
        student_client = client_for(loopback_student, name="student-endpoint")
        teacher = AssistantAgent("teacher", model_client=teacher_client, system_message="Ask one question.")
        student = AssistantAgent("student", model_client=student_client, system_message="Answer with a mistake.")
        team = RoundRobinGroupChat([teacher, student], termination_condition=MaxMessageTermination(3))

        async def scenario():
            try:
                return await team.run(task="Teach photosynthesis.")
            finally:
                await teacher_client.endpoint_client.close()
                await student_client.endpoint_client.close()

        result = asyncio.run(scenario())

    assert [(message.source, message.content) for message in result.messages] == [
        ("user", "Teach photosynthesis."),
        ("teacher", question),
        ("student", answer),
    ]
    assert loopback_teacher.count() == 1 and loopback_student.count() == 1
    assert loopback_student.requests[0].body["messages"] == [
        {"role": "system", "content": "Answer with a mistake."},
        {"role": "user", "content": "Teach photosynthesis."},
        {"role": "user", "content": question},
    ]
    assert [record.endpoint for record in teacher_client.calls] == ["teacher-endpoint"]
    assert [record.endpoint for record in student_client.calls] == ["student-endpoint"]


def test_what_our_endpoints_cannot_take_is_refused_before_any_request(loopback):
    client = client_for(loopback)

    def tool(x: int) -> int:
        return x

    image = Image.from_pil(PILImage.new("RGB", (2, 2)))
    hello = [UserMessage(content="hi", source="user")]
    cases = [
        ("does not support tools", hello, {"tools": [FunctionTool(tool, description="echo")]}),
        ("holds function calls", [AssistantMessage(content=[FunctionCall(id="1", arguments="{}", name="f")],
                                                   source="a")], {}),
        ("function execution result", [FunctionExecutionResultMessage(
            content=[FunctionExecutionResult(content="1", name="f", call_id="1")])], {}),
        ("contains an image", [UserMessage(content=["look:", image], source="user")], {}),
        ("must not set model", hello, {"extra_create_args": {"model": "other"}}),
    ]

    async def scenario():
        for reason, messages, kwargs in cases:
            with pytest.raises(ValueError, match=reason):
                await client.create(messages, **kwargs)

    asyncio.run(run_then_close(client, scenario()))
    assert loopback.count() == 0 and client.calls == []
    assert client.model_info["function_calling"] is False and client.model_info["structured_output"] is True
    messages = [SystemMessage(content="x" * 40), UserMessage(content="y" * 40, source="user")]
    assert client.count_tokens(messages) == 20 and client.remaining_tokens(messages) == 8192 - 20
