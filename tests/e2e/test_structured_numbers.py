"""The frameworks' structured output, as they ask for it, with an integer field: pydantic-ai
(a typed ``output_type``), instructor (TOOLS mode) and LangChain
(``with_structured_output(method="function_calling")``) all force a tool call whose
arguments are a City with ``population: int``. SmolLM2 at temperature 0 writes the
population's digits until max_tokens when an integer may have any number of digits;
with the constraint's bounds (engine/constraint.py) the call closes and parses."""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MODEL, Daemon

PROMPT = "Paris is a city in France. Extract the city."


# A daemon of its own: long tool prompts (see test_tools.py).
@pytest.fixture(scope="module")
def daemon():
    with Daemon("--parallel", "2", "--context-size", "4096").wait_healthy() as d:
        yield d


class City(BaseModel):
    """A city, its country and its population."""

    name: str
    country: str
    population: int


def _check(city: object, finish: str | None) -> None:
    assert isinstance(city, City) and isinstance(city.population, int)
    assert city.name and city.country
    assert finish != "length"


def test_pydantic_ai_typed_output_with_an_integer(daemon):
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        MODEL, provider=OpenAIProvider(base_url=daemon.url + "/v1", api_key="x")
    )
    agent = Agent(model, output_type=City, model_settings={"temperature": 0, "max_tokens": 100})
    result = agent.run_sync(PROMPT)
    last = [m for m in result.all_messages() if isinstance(m, ModelResponse)][-1]
    _check(result.output, last.finish_reason)


def test_instructor_tools_mode_with_an_integer(daemon):
    import instructor

    raw = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    client = instructor.from_openai(raw, mode=instructor.Mode.TOOLS)
    city, completion = client.chat.completions.create_with_completion(
        model=MODEL, response_model=City, messages=[{"role": "user", "content": PROMPT}],
        temperature=0, max_tokens=100, max_retries=0,
    )  # fmt: skip
    _check(city, completion.choices[0].finish_reason)


def test_langchain_function_calling_structured_output_with_an_integer(daemon):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=daemon.url + "/v1", api_key="x", model=MODEL, temperature=0, max_tokens=100,
        max_retries=0,
    )  # fmt: skip
    out = llm.with_structured_output(City, method="function_calling", include_raw=True).invoke(
        PROMPT
    )
    assert out["parsing_error"] is None
    _check(out["parsed"], out["raw"].response_metadata.get("finish_reason"))
