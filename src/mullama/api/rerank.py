"""Rerank and score: ``POST /v1/rerank``, ``/rerank``, ``/v2/rerank`` and llama-server's
``/reranking`` (the Cohere/Jina shape: a ``query``, ``documents`` as strings or
``{"text": ...}`` objects, ``top_n``, ``return_documents``; ``results`` sorted by
``relevance_score``), and vLLM's ``/score`` (``text_1`` and ``text_2``, a string or a list
each: the pairs to score; ``data`` in the pairs' order).

A reranker (a cross-encoder: a model whose pooling is rank, from its GGUF or ``--pooling
rank``) scores each pair through the engine's rank pooling (``ModelManager.rerank``), as
llama-server ``--rerank`` does, with the same scores: the classifier's output as it is
(not normalised). Any chat model scores as a yes/no judge: for each (query, document)
pair a relevance question goes through the model's chat template (the one chat path,
api/chat.py), and the score is the probability of "yes" against "no" in the distribution
of the first token of the answer (every "yes" token of the vocabulary that the top
alternatives hold, " yes" and "Yes" alike, against every "no" one). All the pairs of a
request start at once, so the engine reads them in the same steps; each generates one
token. A token missing from the top alternatives counts as the least of them (at most
that likely): a model that puts neither in its top alternatives scores 0.5.

``model`` may be left out, as llama-server serves one: the first ``--model``. Errors are
OpenAI's shape (wire/errors.py: these paths are not Ollama's)."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from ..engine import limits
from ..engine.protocol import SamplingParams
from ..errors import ClientError, InvalidParameter
from ..wire.framing import ORJSONResponse
from .body import parse_body
from .chat import Chat, engine_requests, plan, start
from .fields import Refusing, StrictBody
from .openapi import MODEL_ERRORS, documented
from .replies import wholes
from .streaming import unless_disconnected
from .thinking import Think

if TYPE_CHECKING:
    from ..models.manager import ModelManager

router = APIRouter()

MAX_PAIRS = limits.MAX_INPUTS  # documents (or pairs) one request scores

# The question each pair is judged by (the model's template wraps it as a user turn).
ASK = 'Judge whether the document is relevant to the search query. Answer only "yes" or "no".'
ASK_AGAIN = "Is the document relevant to the query?"

Text = Annotated[str, Field(max_length=1_000_000)]


# ---- requests --------------------------------------------------------------------------


class DocumentObject(StrictBody, Refusing):
    """A document given as an object (Cohere's and Jina's ``{"text": ...}``); its other
    fields (a title, an id) are reported as ignored."""

    REFUSE_UNKNOWN: ClassVar[bool] = False
    WHERE: ClassVar[str] = "documents[]."

    text: Text


class RerankRequest(StrictBody, Refusing):
    model: str | None = None
    query: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    documents: Annotated[list[Text | DocumentObject], Field(min_length=1, max_length=MAX_PAIRS)]
    top_n: Annotated[int, Field(ge=1)] | None = None  # all of them when left out
    return_documents: bool = False  # each result's ``document: {"text": ...}``
    keep_alive: str | int | float | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_PAIRS)]


class ScoreRequest(StrictBody, Refusing):
    """vLLM's ``/score``: ``text_1`` against each ``text_2`` (one against one, one against
    many, or two lists of one length, scored pair by pair)."""

    model: str | None = None
    text_1: Text | Texts
    text_2: Text | Texts
    keep_alive: str | int | float | None = None

    @model_validator(mode="after")
    def _pairs_match(self) -> ScoreRequest:
        first, second = self.text_1, self.text_2
        if isinstance(first, list) and len(first) > 1:
            n = len(second) if isinstance(second, list) else 1
            if n != len(first):
                raise InvalidParameter(
                    f"text_2 must hold as many texts as text_1 ({len(first)}), or text_1 "
                    f"one text; it holds {n}",
                    param="text_2",
                )
        return self

    def pairs(self) -> list[tuple[str, str]]:
        first = self.text_1 if isinstance(self.text_1, list) else [self.text_1]
        second = self.text_2 if isinstance(self.text_2, list) else [self.text_2]
        if len(first) == 1:
            first = first * len(second)
        return list(zip(first, second, strict=True))


# ---- answers (what the dicts below hold, for /openapi.json) -----------------------------


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None  # {"text": ...} with return_documents


class RerankAnswer(BaseModel):
    id: str
    object: str
    model: str
    results: list[RerankResult]
    usage: Usage


class ScoreItem(BaseModel):
    index: int
    object: str
    score: float


class ScoreAnswer(BaseModel):
    id: str
    object: str
    created: int
    model: str
    data: list[ScoreItem]
    usage: Usage


# ---- scoring ---------------------------------------------------------------------------


@dataclass
class Scores:
    """One score per pair, in the pairs' order, and the tokens read and generated."""

    scores: list[float]
    prompt_tokens: int
    completion_tokens: int = 0

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": total}


def _word(token: str | list[int]) -> str:
    text = token if isinstance(token, str) else bytes(token).decode("utf-8", "replace")
    return text.strip().lower()


def yes_probability(entries: list[Any]) -> float:
    """P(yes) / (P(yes) + P(no)) from the logprob entry of the answer's first token (its
    top alternatives, the raw distribution); a side none of whose tokens is among them
    counts as the least of them. No entry (nothing generated): 0."""
    if not entries:
        return 0.0
    top = entries[0][2]
    if not top:
        return 0.0
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in top:
        word = _word(token)
        if word in mass:
            mass[word] += math.exp(logprob)
    floor = math.exp(min(logprob for _, logprob in top))
    yes, no = mass["yes"] or floor, mass["no"] or floor
    return yes / (yes + no)


def _judge_sampling(_profile: Any) -> SamplingParams:
    """One greedy token with the top alternatives of its distribution (an end of
    generation is never sampled, so the first token always comes with its entry)."""
    return SamplingParams(
        max_tokens=1, temperature=0.0, ignore_eos=True, logprobs=limits.MAX_TOP_LOGPROBS
    )


def judge_chat(model: str, query: str, document: str, keep_alive: Any = None) -> Chat:
    """The relevance question of one pair as a chat (thinking off, no system prompt of
    the model's: the template's own, if it writes one, stays)."""
    content = f"{ASK}\n\nQuery: {query}\n\nDocument: {document}\n\n{ASK_AGAIN}"
    turn = [{"role": "user", "content": content}]
    return Chat(model, lambda _native: turn, _judge_sampling, keep_alive=keep_alive,
                default_system=False, think=Think(on=False))  # fmt: skip


async def judge(
    models: ModelManager, model: str, pairs: list[tuple[str, str]], rid: str, keep_alive: Any = None
) -> Scores:
    """Each pair's yes/no score from a chat model, all pairs started at once."""
    target = models.route(model)
    chats = [judge_chat(model, q, d, keep_alive) for q, d in pairs]
    planned = await plan(models, chats[0], target)  # the same plan for every pair
    requests = [engine_requests(c, f"{rid}/{i}", planned)[0] for i, c in enumerate(chats)]
    replies = await wholes(await start(models, target, requests, keep_alive))
    return Scores(
        [yes_probability(r.end.logprobs) for r in replies],
        sum(r.end.usage.prompt for r in replies),
        sum(r.end.usage.completion for r in replies),
    )


async def score_pairs(
    models: ModelManager, model: str, pairs: list[tuple[str, str]], rid: str, keep_alive: Any = None
) -> Scores:
    """Each pair's score: from the model's rank pooling when it is a reranker (one call
    per distinct query, its documents scored together), else as a yes/no judge."""
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    scores = [0.0] * len(pairs)
    read = 0
    for query, indices in by_query.items():
        ranked = await models.rerank(model, query, [pairs[i][1] for i in indices], keep_alive)
        if ranked is None:  # not a reranker
            return await judge(models, model, pairs, rid, keep_alive)
        for i, value in zip(indices, ranked.scores, strict=True):
            scores[i] = value
        read += ranked.prompt_tokens
    return Scores(scores, read)


# ---- routes ----------------------------------------------------------------------------


def _model(request: Request, given: str | None) -> str:
    name = given or request.app.state.models.default_name
    if not name:
        raise ClientError("no model is served; give one with --model", param="model")
    return str(name)


def _rid(request: Request) -> str:
    return str(request.scope["state"]["request_id"])  # set by RequestStateMiddleware


async def _rerank(request: Request, body: RerankRequest) -> dict[str, Any]:
    model = _model(request, body.model)
    texts = body.texts()
    pairs = [(body.query, t) for t in texts]
    scored = await score_pairs(request.app.state.models, model, pairs, _rid(request),
                               body.keep_alive)  # fmt: skip
    order = sorted(range(len(texts)), key=lambda i: -scored.scores[i])[: body.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scored.scores[i]}
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    return {"id": f"rerank-{uuid.uuid4().hex}", "object": "list", "model": model,
            "results": results, "usage": scored.usage()}  # fmt: skip


RERANK = {"model": "", "query": "What is the capital of France?",
          "documents": ["Paris is the capital of France.", "Cats sleep a lot."], "top_n": 1}  # fmt: skip


# The aliases (vLLM's /v2, llama-server's /reranking) are the same route: documented once.
@router.post("/v1/rerank")
@router.post("/rerank")
@router.post("/v2/rerank", include_in_schema=False)
@router.post("/reranking", include_in_schema=False)
@router.post("/v1/reranking", include_in_schema=False)
@documented(RerankRequest, RerankAnswer, errors=MODEL_ERRORS, example=RERANK)
async def rerank(request: Request) -> Response:
    body = await parse_body(request, RerankRequest)
    return ORJSONResponse(await unless_disconnected(request, _rerank(request, body)))


async def _score(request: Request, body: ScoreRequest) -> dict[str, Any]:
    model = _model(request, body.model)
    pairs = body.pairs()
    scored = await score_pairs(request.app.state.models, model, pairs, _rid(request),
                               body.keep_alive)  # fmt: skip
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scored.scores)]
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": model, "data": data, "usage": scored.usage()}  # fmt: skip


SCORE = {"model": "", "text_1": "What is the capital of France?",
         "text_2": ["Paris is the capital of France.", "Cats sleep a lot."]}  # fmt: skip


@router.post("/score")
@router.post("/v1/score", include_in_schema=False)
@documented(ScoreRequest, ScoreAnswer, errors=MODEL_ERRORS, example=SCORE)
async def score(request: Request) -> Response:
    body = await parse_body(request, ScoreRequest)
    return ORJSONResponse(await unless_disconnected(request, _score(request, body)))
