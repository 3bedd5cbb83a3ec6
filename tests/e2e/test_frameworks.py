"""Agent frameworks, unchanged, against the real daemon: pydantic-ai (a typed
``output_type``, and an agent with a tool) and the OpenAI Agents SDK with its
chat-completions model (a typed ``output_type``, and a function tool with a forced
``tool_choice``). instructor and LangChain are in test_tools.py."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.conftest import MODEL, Daemon


# Long tool prompts: a daemon of their own (see test_tools.py).
@pytest.fixture(scope="module")
def daemon():
    with Daemon("--parallel", "2", "--context-size", "4096").wait_healthy() as d:
        yield d


class City(BaseModel):
    name: str
    country: str


SETTINGS = {"temperature": 0, "max_tokens": 100}


def _pydantic_ai_model(daemon):
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=daemon.url + "/v1", api_key="x"))


def test_pydantic_ai_agent_returns_its_output_type(daemon):
    from pydantic_ai import Agent

    agent = Agent(_pydantic_ai_model(daemon), output_type=City, model_settings=SETTINGS)
    result = agent.run_sync("Paris is a city in France. Extract the city.")
    assert isinstance(result.output, City) and result.output.name == "Paris"


def test_pydantic_ai_agent_calls_its_tool_then_answers_typed(daemon):
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.messages import ToolCallPart, ToolReturnPart

    calls: list[str] = []

    async def until_used(ctx: RunContext, tool_def):  # pydantic-ai's dynamic tools
        return None if calls else tool_def

    agent = Agent(_pydantic_ai_model(daemon), output_type=City, model_settings=SETTINGS)

    @agent.tool_plain(prepare=until_used)
    def lookup_country(city: str) -> str:
        """The country a city is in."""
        calls.append(city)
        return "France"

    result = agent.run_sync("Which country is Paris in? Look it up with the tool.")
    assert calls == ["Paris"]  # the tool ran, with the model's arguments
    parts = [p for m in result.all_messages() for p in m.parts]
    returned = [p for p in parts if isinstance(p, ToolReturnPart)]
    assert returned[0].tool_name == "lookup_country" and returned[0].content == "France"
    assert any(isinstance(p, ToolCallPart) and p.tool_name == "final_result" for p in parts)
    assert isinstance(result.output, City)


def _agents_model(daemon):
    from agents import OpenAIChatCompletionsModel, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # no traces to OpenAI's servers
    client = AsyncOpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)


def test_openai_agents_output_type(daemon):
    from agents import Agent, ModelSettings, Runner

    agent = Agent(
        name="extractor", instructions="Extract the city.", model=_agents_model(daemon),
        output_type=City, model_settings=ModelSettings(temperature=0, max_tokens=100),
    )  # fmt: skip
    result = Runner.run_sync(agent, "Paris is a city in France.")
    assert isinstance(result.final_output, City)
    # The values the model extracted (SmolLM2 writes the country "FRANCE" on some CPUs).
    assert result.final_output.name == "Paris" and result.final_output.country.lower() == "france"


def test_openai_agents_function_tool_with_a_forced_tool_choice(daemon):
    from agents import Agent, ModelSettings, Runner, function_tool

    got: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        got.append(city)
        return "18 C and sunny"

    agent = Agent(
        name="weather", instructions="Answer with the tool.", model=_agents_model(daemon),
        tools=[get_weather], tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(temperature=0, max_tokens=100, tool_choice="get_weather"),
    )  # fmt: skip
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert got == ["Paris"] and result.final_output == "18 C and sunny"
