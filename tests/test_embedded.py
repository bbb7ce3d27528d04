"""The embedded SmolLM2-135M behind our Serve app: schema-valid JSON every time, AutoGen structured output, and
real teacher/student conversations. Checks structure, never wording: a 135M model is a smoke test of the loop."""

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from sefl_ray.config import load_config
from sefl_ray.data.records import read_records
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.ports import free_port

MODEL = "embedded:smollm2-135m"


@pytest.fixture(scope="module")
def embedded_url(ray_session, embedded_model_dir):
    from ray import serve

    from sefl_ray.serve.app import build_app

    port = free_port()
    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": MODEL, "max_batch_size": 8, "batch_wait_timeout_s": 0.05, "num_cpus": 1,
                        "torch_threads": 2}),
              name="embedded", route_prefix="/")
    yield f"http://127.0.0.1:{port}/v1"
    serve.shutdown()


class Quiz(BaseModel):
    question: str = Field(max_length=160)
    answer: str = Field(max_length=80)
    difficulty: int = Field(ge=1, le=5)
    topics: list[str] = Field(min_length=1, max_length=3)


TOPICS = ["photosynthesis", "fractions", "the French revolution", "plate tectonics", "supply and demand",
          "binary numbers", "the water cycle", "Newton's second law", "poetry meter", "probability of dice"]


def test_json_schema_output_is_valid_every_time(embedded_url):
    schema = Quiz.model_json_schema()
    client = openai.OpenAI(base_url=embedded_url, api_key="EMPTY", max_retries=0, timeout=300)
    response_format = {"type": "json_schema", "json_schema": {"name": "Quiz", "schema": schema}}

    def ask(index):
        topic = TOPICS[index % len(TOPICS)]
        style = "a hard" if index % 2 else "an easy"
        return client.chat.completions.create(
            model=MODEL, max_tokens=160, temperature=0.8, seed=index, response_format=response_format,
            messages=[{"role": "user", "content": f"Write {style} quiz question about {topic}."}],
        )

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        completions = list(pool.map(ask, range(12)))
    for completion in completions:
        data = json.loads(completion.choices[0].message.content)
        jsonschema.validate(data, schema)
        assert completion.usage.completion_tokens > 0


def test_autogen_structured_output(embedded_url):
    import asyncio

    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def run():
        model_client = OpenAIChatCompletionClient(
            model=MODEL, base_url=embedded_url, api_key="EMPTY", max_tokens=160, temperature=0.7,
            model_info={"vision": False, "function_calling": False, "json_output": True,
                        "structured_output": True, "family": "unknown"},
        )
        agent = AssistantAgent("quizmaster", model_client=model_client, output_content_type=Quiz)
        result = await agent.run(task="Write a quiz question about the water cycle.")
        await model_client.close()
        return result.messages[-1].content

    quiz = asyncio.run(run())
    assert isinstance(quiz, Quiz) and quiz.question


def test_four_real_conversations(embedded_url, tmp_path):
    config = load_config(None, [
        f"run_dir={tmp_path / 'run'}",
        f"endpoints=[{{name: local, model: '{MODEL}', base_url: '{embedded_url}', timeout_s: 600}}]",
        "synth.num_conversations=4", "synth.max_new_tokens=256", "synth.concurrency=4", "synth.num_actors=1",
        "synth.max_mistakes=2",
    ])
    records = read_records(run_synth(config)).to_pylist()
    assert len(records) == 4
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 3, [r["error"] for r in records if r["status"] != "ok"]
    for row in ok:
        assert row["assignment"].strip() and row["submission"].strip()
        assert len(row["errors"]) == len(row["mistake_kinds"])  # the student declared each mistake it made
        assert 1 <= len(row["feedback_items"]) <= len(row["mistake_kinds"]) + 1  # feedback item per mistake
        assert all(item.strip() for item in row["feedback_items"])
        roles = [m["role"] for m in row["messages"]]
        assert roles[:6] == ["instruction", "teacher", "instruction", "student", "instruction", "teacher"][:len(roles)]
