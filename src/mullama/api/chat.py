"""The one chat path: a chat request of any dialect (OpenAI chat, Responses, Anthropic
Messages, Ollama chat and generate) as the engine requests it makes and starts, and the
same conversion for counting its tokens (``/tokenize``, ``count_tokens``).

A dialect describes its request as a ``Chat``: its turns (as the template gets them, for
a template that writes tools itself or not), its sampling over the model's defaults, its
tools and ``tool_choice``. Here the tools are planned for the template that renders the
chat (api/tools.py), the turns get the model's system prompt and the tools' instruction,
the sampling gets the tools' constraint, the model's thinking is planned for the
template's thinking format (api/thinking.py: the engine's ThinkSyntax, the template's
switch, earlier turns' reasoning where the template reads it), and the generations start;
each is a
``Started`` (api/replies.py), which the dialect reads as a reply and encodes. Text
completions (``/v1/completions``, llama-server's ``/completion``) start here too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.protocol import Chunk, ChunkStream, GenerateRequest, SamplingParams, TokenizeRequest
from . import fields
from .openai.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from .profiles import Profile, profile_of
from .replies import Started
from .thinking import Think, ThinkFormat, history_for, plan_thinking
from .thinking import probe as probe_thinking
from .tools import ToolChoice, ToolPlan, ToolSpec, plan_chat_tools

if TYPE_CHECKING:
    from ..models.manager import ModelManager
    from ..models.router import Target

Turns = Callable[[bool], list[dict[str, Any]]]


def _model_defaults(profile: Profile) -> SamplingParams:
    return SamplingParams(**profile.defaults)


@dataclass
class Chat:
    """A chat request in the terms its engine requests are made of. ``turns(native)``:
    its messages as the template gets them (``native``: the template writes tools and
    calls itself); ``sampling(profile)``: its sampling over the model's defaults;
    ``output_format``: the request field that already constrains the output, if any;
    ``default_system``: the model's system prompt goes first when the turns have none;
    ``template``: the request's own template, over the model's; ``raw``: a prompt sent
    as it is (no template, no special tokens) instead of the turns; ``think``: what it
    asks of the model's thinking; ``template_vars``: more variables for the template
    (``chat_template_kwargs``)."""

    model: str
    turns: Turns
    sampling: Callable[[Profile], SamplingParams] = _model_defaults
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output_format: str | None = None
    n: int = 1
    cache_salt: str | None = None
    keep_alive: Any = None
    default_system: bool = True
    template: str | None = None
    raw: str | None = None
    think: Think = field(default_factory=Think)
    template_vars: dict[str, Any] | None = None


def openai_turns(model: str, messages: list[ChatMessage]) -> Turns:
    """OpenAI chat messages as the template gets them."""
    return lambda native: [m.for_prompt(i, model, native) for i, m in enumerate(messages)]


def openai_chat(req: ChatCompletionRequest) -> Chat:
    """An OpenAI chat request (also what Responses and Anthropic requests become)."""
    fmt = req.response_format
    max_tokens = req.max_completion_tokens or req.max_tokens
    return Chat(
        req.model,
        openai_turns(req.model, req.messages),
        lambda profile: req.to_sampling_params(profile, max_tokens),
        req.tools,
        req.tool_choice,
        req.parallel_tool_calls,
        "response_format" if fmt is not None and fmt.type != "text" else None,
        req.n,
        req.cache_salt,
        req.keep_alive,
        think=req.think(),
        template_vars=req.chat_template_kwargs,
    )


@dataclass
class Planned:
    """A chat planned for its model: its tools, the model's profile and the thinking
    format of the template that renders it (None: not recognised)."""

    tools: ToolPlan
    profile: Profile
    thinking: ThinkFormat | None = None


async def plan(models: ModelManager, chat: Chat, target: str | Target) -> Planned:
    """The chat's tools planned for the template that renders it, the model's profile
    and the template's thinking format (``target``: the model the request's name means,
    or the name)."""
    profile = profile_of(models, target)
    tools = await plan_chat_tools(
        chat.tools, chat.tool_choice, chat.parallel_tool_calls, chat.output_format,
        profile.chat_template,
    )  # fmt: skip
    thinking = None if chat.raw is not None else await probe_thinking(
        chat.template or profile.chat_template
    )  # fmt: skip
    if thinking is None and chat.think.asked_by:  # no thinking to act on
        fields.ignored(chat.think.asked_by)
    return Planned(tools, profile, thinking)


def _messages(chat: Chat, planned: Planned) -> list[dict[str, Any]]:
    tools, profile = planned.tools, planned.profile
    messages = history_for(chat.turns(tools.active and tools.native), planned.thinking)
    if chat.default_system:
        messages = profile.messages(messages)
    return tools.with_instruction(messages)


def engine_requests(chat: Chat, rid: str, planned: Planned) -> list[GenerateRequest]:
    """One engine request per choice (``n``), each with its own seed when one is set."""
    tools, profile = planned.tools, planned.profile
    if chat.raw is not None:
        return [GenerateRequest(f"{rid}/0", chat.sampling(profile), prompt=chat.raw,
                                add_special=False)]  # fmt: skip
    messages = _messages(chat, planned)
    template = chat.template or profile.template
    out = []
    for i in range(chat.n):
        params = chat.sampling(profile)
        if params.json_schema is None:  # an output format leaves auto's calls free
            params.tool_calls = tools.constraint()
        if params.seed is not None:
            params.seed += i
        constrained = params.json_schema is not None or tools.forces_call
        params.thinking, variables = plan_thinking(
            planned.thinking, chat.think, profile.thinking, chat.template_vars, constrained
        )
        out.append(
            GenerateRequest(
                f"{rid}/{i}",
                params,
                messages=messages,
                template=template,
                tools=tools.tools_for_template(),
                cache_salt=chat.cache_salt,
                template_vars=variables or None,
            )  # fmt: skip
        )
    return out


async def start_chat(
    models: ModelManager, chat: Chat, rid: str, target: Target | None = None
) -> list[Started]:
    """Plan the chat's tools and thinking, make its engine requests and start them (one
    per choice); the model's name is resolved once, for all of that (``target``: already
    resolved)."""
    target = target or models.route(chat.model)
    planned = await plan(models, chat, target)
    requests = engine_requests(chat, rid, planned)
    return await start(models, target, requests, chat.keep_alive, planned.tools)


async def tokenize_request(models: ModelManager, chat: Chat, target: Target) -> TokenizeRequest:
    """The tokenize frame of a chat: exactly the tokens its engine request feeds the model
    (its tools and thinking switch through the template that renders it; ``target``: the
    model its name means)."""
    planned = await plan(models, chat, target)
    profile = planned.profile
    _, variables = plan_thinking(planned.thinking, chat.think, profile.thinking, chat.template_vars)
    return TokenizeRequest(
        id="",
        messages=_messages(chat, planned),
        tools=planned.tools.tools_for_template(),
        template=chat.template or profile.template,
        template_vars=variables or None,
    )


def completion_requests(
    req: CompletionRequest, rid: str, profile: Profile
) -> list[GenerateRequest]:
    """A text completion's engine requests (over ``profile``, the model's): ``n`` per
    prompt, each with its own seed."""
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = profile.defaults.get("max_tokens") or 16
    out = []
    for p_idx, prompt in enumerate(req.prompts()):
        for i in range(req.n):
            params = req.to_sampling_params(profile, max_tokens)
            if params.seed is not None:
                params.seed += i
            sid, salt = f"{rid}/{p_idx}/{i}", req.cache_salt
            if isinstance(prompt, str):
                out.append(GenerateRequest(sid, params, prompt=prompt, cache_salt=salt))
            else:
                out.append(GenerateRequest(sid, params, prompt_tokens=prompt, cache_salt=salt))
    return out


_NO_TOOLS = ToolPlan([], "none", True)


async def start(
    models: ModelManager,
    model: str | Target,
    requests: list[GenerateRequest],
    keep_alive: Any = None,
    tools: ToolPlan = _NO_TOOLS,
) -> list[Started]:
    """Start every generation and wait until each is accepted (errors surface here, before
    any byte of the response is sent); on any error, stop them all."""
    started: list[Started] = []
    try:
        for req in requests:
            gen = models.generate(model, req, keep_alive)
            started.append(Started(tools, (await _accepted(gen)).prompt_tokens, gen))
    except BaseException:
        for s in started:
            await s.gen.aclose()
        raise
    return started


async def _accepted(gen: ChunkStream) -> Chunk:
    try:
        return await gen.__anext__()
    except BaseException:
        await gen.aclose()
        raise
