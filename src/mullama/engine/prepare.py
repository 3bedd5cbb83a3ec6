"""A request made ready for the decode loop, on the worker's reader thread (llama.cpp's
tokenizer is thread-safe): the prompt's tokens (chat messages through the template, text,
or token ids checked against the vocabulary), its length within the context, and its
sampler with any constraint compiled. Errors here are the client's (a 400), sent before
the request is queued.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidParameter
from .chat_template import ChatTemplate, TemplateRenderError
from .constraint import Grammars, tool_grammar
from .detokenize import StopMatcher
from .limits import Length, bound, fit_length
from .llama import Model, ModelInfo, Sampler
from .protocol import GenerateRequest, SamplingParams, TokenizeRequest, WorkerSpec
from .reasoning import Thinking, initial_phase
from .sequence import Sequence
from .turns import render_turns


class Preparer:
    def __init__(self, model: Model, info: ModelInfo, spec: WorkerSpec, ctx_per_seq: int) -> None:
        self.model = model
        self.info = info
        self.spec = spec
        self.ctx_per_seq = ctx_per_seq
        self.template = ChatTemplate(info.chat_template, info.bos_text, info.eos_text)
        self._templates: dict[str, ChatTemplate] = {}
        self.grammars = Grammars(model.guidance_tokenizer)

    def sequence(self, req: GenerateRequest) -> tuple[Sequence, Length]:
        """The request as a sequence to schedule, and the length its answer may take."""
        limit = min(self.ctx_per_seq, req.params.context_limit or self.ctx_per_seq)
        params = bound(req.params, limit, self.info.n_vocab)
        tokens, param, text = self._prompt_tokens(req)
        n_prompt = len(tokens)
        spec = self.spec
        length = fit_length(n_prompt, params.max_tokens, limit, spec.max_tokens,
                            spec.strict_fields, param)  # fmt: skip
        return Sequence(
            id=req.request_id,
            tokens=tokens,
            n_prompt=n_prompt,
            max_tokens=length.tokens,
            sampler=self._sampler(params),
            shown=self._shown(params),
            thinking=self._thinking(params, text),
            stops=StopMatcher(list(params.stop)),
            ignore_eos=params.ignore_eos,
            ctx_limit=limit,
            top_logprobs=params.logprobs,
            score_prompt=params.prompt_logprobs and params.logprobs is not None,
            scope=req.cache_scope,
        ), length

    def tokenize(self, req: TokenizeRequest) -> list[int]:
        """The tokens of a tokenizer request: its text as it is, or its messages through
        the chat template."""
        if req.messages is not None:
            text = self._render(
                req.messages, req.template, req.add_generation_prompt, req.tools, req.template_vars
            )
            return self._chat_tokens(text)
        return self.model.tokenize(req.text or "", add_special=req.add_special, parse_special=True)

    def check_ids(self, tokens: list[int], param: str) -> list[int]:
        n_vocab = self.info.n_vocab
        for i, tok in enumerate(tokens):
            if not isinstance(tok, int) or isinstance(tok, bool) or not 0 <= tok < n_vocab:
                raise InvalidParameter(
                    f"{param}[{i}] = {tok!r} is not a token of this model (ids are 0 to "
                    f"{n_vocab - 1})",
                    param=param,
                )
        return tokens

    def _template(self, source: str | None) -> ChatTemplate:
        """The model's chat template, or a custom model's override (compiled once)."""
        if not source:
            return self.template
        template = self._templates.get(source)
        if template is None:
            try:
                template = ChatTemplate(source, self.info.bos_text, self.info.eos_text)
            except Exception as exc:  # noqa: BLE001 - jinja2 syntax errors
                raise TemplateRenderError(f"chat template does not compile: {exc}") from exc
            if len(self._templates) >= 16:
                self._templates.clear()
            self._templates[source] = template
        return template

    def _prompt_tokens(self, req: GenerateRequest) -> tuple[list[int], str, str | None]:
        """The prompt's tokens (chat messages through the template, or raw text), the
        request field to name in errors, and the rendered chat (None for a prompt)."""
        text = None
        if req.messages is not None:
            text = self._render(req.messages, req.template, True, req.tools, req.template_vars)
            tokens = self._chat_tokens(text)
            param = "messages"
        elif req.prompt_tokens is not None:
            tokens = list(self.check_ids(req.prompt_tokens, "prompt"))
            param = "prompt"
        else:
            tokens = self.model.tokenize(
                req.prompt or "", add_special=req.add_special, parse_special=True
            )
            param = "prompt"
        if not tokens:
            raise InvalidParameter("the prompt is empty", param=param)
        return tokens, param, text

    def _render(
        self,
        messages: list[dict[str, Any]],
        template: str | None,
        gen: bool,
        tools: list[dict[str, Any]] | None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        chat = self._template(template)
        try:
            return render_turns(lambda shape: chat.render(shape, gen, tools, variables), messages)
        except TemplateRenderError as exc:
            raise InvalidParameter(str(exc), param="messages") from exc

    def _chat_tokens(self, text: str) -> list[int]:
        """A rendered chat's tokens: BOS added unless the template wrote it already."""
        add_special = self.info.add_bos and not (
            self.info.bos_text and text.startswith(self.info.bos_text)
        )
        return self.model.tokenize(text, add_special=add_special, parse_special=True)

    def _sampler(self, params: SamplingParams) -> Sampler:
        """The request's sampler, with its constraint compiled here on the reader thread
        (errors are the client's: a 400 naming the schema path)."""
        grammar, param = None, "response_format"
        if params.tool_calls is not None:
            grammar, param = tool_grammar(params.tool_calls, self._split), "tools"
        constraint = self.grammars.constraint(grammar, params.json_schema, param)
        return Sampler(self.model, params, constraint)

    def _split(self, text: str) -> list[int | str]:
        """A tool-call marker as literal text and special tokens (see tool_grammar)."""
        tokens = self.model.tokenize(text, add_special=False, parse_special=True)
        special = self.grammars.tokenizer.is_special_token
        if not any(special(t) for t in tokens):
            return [text] if text else []
        out: list[int | str] = []
        for t in tokens:
            if special(t):
                out.append(t)
            elif out and isinstance(out[-1], str):
                out[-1] += self.model.piece(t).decode("utf-8", "replace")
            else:
                out.append(self.model.piece(t).decode("utf-8", "replace"))
        return out

    def _shown(self, params: SamplingParams) -> frozenset[int]:
        """The special tokens of a request's tool-call and thinking markers: written out
        as text (a control token's text is hidden otherwise), so the calls can be read
        and the thinking told apart."""
        markers: tuple[str, ...] = ()
        if params.tool_calls is not None:
            syn = params.tool_calls.syntax
            markers = (syn.open, syn.begin, syn.end, syn.separator, syn.close)
        if params.thinking is not None:
            think = params.thinking
            markers += (think.open, think.close, think.answer)
        return frozenset(p for m in markers for p in self._split(m) if isinstance(p, int))

    def _thinking(self, params: SamplingParams, prompt: str | None) -> Thinking | None:
        """A chat reply's thinking state, its phase read off the rendered prompt (a
        prompt's completion is text as it comes: it has none)."""
        if params.thinking is None or prompt is None:
            return None
        phase = initial_phase(params.thinking, prompt)
        return Thinking(params.thinking, phase, self._written)

    def _written(self, text: str) -> list[int]:
        """The tokens of text the engine writes itself (a thinking block's markers)."""
        return self.model.tokenize(text, add_special=False, parse_special=True)
