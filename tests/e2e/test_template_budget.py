"""A chat template that runs out of its budget fails its own request, and only that
(security issue 31): the daemon, with the tiny model under custom models whose templates
misbehave only where /api/create's trial render does not look.

- with tools: the API probes the template for what it knows of tools; this one loops
  over a 100,000-character string twice (10^10 iterations, once counted as none) when
  it is given tools. The probe runs off the event loop: /health and another model's
  chat answer while it runs; the request gets a 400 naming the budget, and the next one
  is refused at once (the template is marked).
- with a longer conversation: the worker renders the template; the same 400, the same
  mark, and the model still serves other requests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL, Daemon

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LOOP = "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
WITH_TOOLS = "{% if tools %}" + LOOP + "{% endif %}" + CHAT
LONG_CHATS = "{% if messages|length > 2 %}" + LOOP + "{% endif %}" + CHAT
TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
HI = [{"role": "user", "content": "Say hi."}]
LONG = [*HI, {"role": "assistant", "content": "Hi."}, *HI]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    store = {"MULLAMA_CACHE_DIR": str(tmp_path_factory.mktemp("store"))}  # its own models
    with Daemon("--parallel", "2", "--context-size", "1024", env=store).wait_healthy() as d:
        client = ollama.Client(host=d.url, timeout=120)
        for name, template in (("smol-tools-loop", WITH_TOOLS), ("smol-long-loop", LONG_CHATS)):
            client.create(model=name, from_=MODEL, template=template, stream=False)
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


def _chat(client: openai.OpenAI, model: str, messages: list, **kw) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4, **kw)
    return reply.choices[0].finish_reason


def _refused(client: openai.OpenAI, model: str, messages: list, **kw) -> str:
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, model, messages, **kw)
    return err.value.message


def test_a_template_over_budget_with_tools_fails_its_request_only(daemon, client):
    with ThreadPoolExecutor(2) as pool, httpx.Client(base_url=daemon.url, timeout=60) as http:
        tools = pool.submit(_refused, client, "smol-tools-loop", HI, tools=[TOOL])
        plain = pool.submit(_chat, client, MODEL, HI)  # another model, meanwhile
        healthy = 0
        while not tools.done():  # /health answers while the template is probed
            assert http.get("/health").status_code == 200
            healthy += not tools.done()
        first = tools.result()
        assert plain.result() in ("stop", "length")
    assert healthy >= 1
    assert "budget" in first and "marked" not in first
    # The template is marked: the next request with tools is refused without a probe.
    again = _refused(client, "smol-tools-loop", HI, tools=[TOOL])
    assert "budget" in again and "marked" in again
    # ...and only requests with tools: the same model still chats without them.
    assert _chat(client, "smol-tools-loop", HI) in ("stop", "length")


def test_a_template_over_budget_in_the_worker_fails_its_request_only(daemon, client):
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(_refused, client, "smol-long-loop", LONG)
        plain = pool.submit(_chat, client, MODEL, HI)  # the same engine, meanwhile
        first = long.result()
        assert plain.result() in ("stop", "length")
    assert httpx.get(daemon.url + "/health", timeout=60).status_code == 200
    assert "budget" in first and "marked" not in first
    again = _refused(client, "smol-long-loop", LONG)
    assert "budget" in again and "marked" in again
    # A shorter conversation is still rendered: one long chat does not take the
    # template away from everyone.
    assert _chat(client, "smol-long-loop", HI) in ("stop", "length")
