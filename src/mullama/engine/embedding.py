"""The worker's embedding thread: embeddings and rank scores on a second llama_context.

The context is made on the first request (a worker that never embeds keeps no second
context) with ``embeddings=True`` and the model's pooling: the GGUF's
``<arch>.pooling_type``, or ``--pooling`` / ``--model-opt NAME:pooling=``; mean when
neither says (a chat model such as SmolLM2 has none). Its KV cache is one pool
(``kv_unified``) shared by up to ``MAX_SEQS`` sequences, so the inputs of one request are
decoded together: consecutive inputs packed into one ``llama_batch`` of at most
``n_batch`` tokens, one sequence id each, as llama-server's slots share a step. Each
sequence attends only to its own cells, so its vector is the one it gets alone.

Rank pooling (cross-encoder rerankers) gives one score per (query, document) pair,
tokenized as llama-server's ``format_prompt_rerank`` does: the GGUF's ``rerank`` chat
template with ``{query}`` and ``{document}`` filled in, else ``[BOS] query [EOS] [SEP]
document [EOS]`` as the vocabulary adds them.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ContextLengthExceeded, InvalidParameter, MullamaError, ServerError
from .cpushare import CpuShare
from .llama import Batch, Context, ContextConfig, Model, RankVocab
from .messages import EmbedRequest, EmbedResult, Failed, RankRequest, RankResult
from .protocol import WorkerSpec, embd_normalize

log = logging.getLogger("mullama.worker")

# llama.cpp's enum llama_pooling_type (include/llama.h), by the names --pooling takes.
POOLINGS = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
POOLING_NAMES = {v: k for k, v in POOLINGS.items()}
# Sequence ids of the embedding context (llama.cpp allows 256; it must divide n_batch, or
# llama.cpp's reserve of the pooling graph aborts): the last holds the filler (below), the
# others one input each; inputs past them go to the next decode.
SEQ_IDS = 64
FILLER = SEQ_IDS - 1
MAX_SEQS = SEQ_IDS - 1
# Each input starts at a batch row that is a multiple of this, the rows between filled by
# a sequence of its own. Measured on SmolLM2 (CPU, flash attention off): an input that
# starts at such a row gets the vector it gets alone (within 1e-7); one that starts
# elsewhere differs by up to 1e-3 in a component (the CPU's matrix kernels take the
# batch's rows in blocks). The filler costs at most 15 tokens an input.
ALIGN = 16
# The embedding context's tokens: one decode's worth (an input longer than this is refused
# or, when the client allows it, truncated).
MAX_TOKENS = 2048
# The most rows decoded together. A non-causal model (BERT) attends over the whole batch,
# masked: 100 rerank pairs of ~80 tokens took 629 ms in decodes of up to 2048 rows, 306
# ms in decodes of up to 512 (llama-server's n_ubatch; benchmarks/rerank.py).
PACK_ROWS = 512


def model_pooling(spec_pooling: str | None, gguf_value: str | None) -> str:
    """The pooling a model's embeddings use: the one asked (``--pooling``), else the
    GGUF's ``<arch>.pooling_type`` (llama.cpp's number), else mean."""
    if spec_pooling:
        return spec_pooling
    if gguf_value is not None:
        try:
            return POOLING_NAMES.get(int(gguf_value), "mean")
        except ValueError:
            log.warning("unreadable pooling_type %r in the GGUF: mean pooling", gguf_value)
    return "mean"


def fit_input(tokens: list[int], limit: int, truncate: bool, what: str, param: str) -> list[int]:
    """One input's tokens within ``limit``: refused when longer, unless the client lets it
    be truncated (the caller reports which were)."""
    if not tokens:
        raise InvalidParameter(f"{what} is empty", param=param)
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        raise ContextLengthExceeded(
            f"{what} has {len(tokens)} tokens; the embedding context holds {limit}", param=param
        )
    return tokens[:limit]


def aligned(n: int) -> int:
    """The rows an input of ``n`` tokens takes in a batch, with the filler after it."""
    return -(-n // ALIGN) * ALIGN


def pack(lengths: list[int], n_batch: int, n_seqs: int) -> list[range]:
    """Consecutive inputs grouped into decodes of at most ``n_batch`` rows and ``n_seqs``
    sequences (each input's rows, ``aligned``, at most ``n_batch``)."""
    groups: list[range] = []
    start, used = 0, 0
    for i, n in enumerate(map(aligned, lengths)):
        if i > start and (used + n > n_batch or i - start >= n_seqs):
            groups.append(range(start, i))
            start, used = i, 0
        used += n
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


class Embedder:
    """The embedding thread of a worker: ``put`` a request from the reader thread, ``run``
    answers them one after another."""

    def __init__(
        self, model: Model, spec: WorkerSpec, ctx_per_seq: int, send: Callable[[Any], None]
    ) -> None:
        self.model = model
        self.spec = spec
        self.send = send  # the worker's Channel.send
        arch = model.meta("general.architecture") or "llama"
        self.pooling = model_pooling(spec.pooling, model.meta(f"{arch}.pooling_type"))
        self.n_ctx = min(ctx_per_seq, MAX_TOKENS)
        self._queue: queue.Queue[EmbedRequest | RankRequest] = queue.Queue()
        self._ctx: Context | None = None
        self._batch: Batch | None = None
        self._share: CpuShare | None = None  # made on the first request

    def put(self, request: EmbedRequest | RankRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        if self._share is not None:
            self._share.close()

    def run(self) -> None:
        while True:
            req = self._queue.get()
            try:
                self.send(self._answer(req))
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                if not isinstance(exc, MullamaError):
                    log.exception("request %s: embedding failed", req.id)
                    exc = ServerError(f"embedding failed: {exc}")
                self.send(Failed(req.id, exc))

    def _answer(self, req: EmbedRequest | RankRequest) -> EmbedResult | RankResult:
        if isinstance(req, RankRequest):
            if self.pooling != "rank":
                raise self._refused("ranking", "reranker (pooling rank)")
            tokens = [self._pair(req.query, doc, i) for i, doc in enumerate(req.documents)]
            rows = self._decode(tokens)
            return RankResult(req.id, [row[0] for row in rows], sum(map(len, tokens)))
        if self.pooling == "rank":
            raise self._refused("embeddings", "pooled embedding model (mean, cls or last)")
        if self.pooling == "none" and not req.per_token:
            raise self._refused(
                "single vector per input (it gives one per token, which only llama-server's "
                "/embedding carries)",
                "pooled embedding model (mean, cls or last)",
            )
        tokens, truncated = [], []
        for i, text in enumerate(req.inputs):
            ids = self.model.tokenize(text, add_special=True, parse_special=False)
            fitted = fit_input(ids, self.n_ctx, req.truncate, f"input[{i}]", "input")
            if len(fitted) < len(ids):
                truncated.append(i)
            tokens.append(fitted)
        outputs = self._decode(tokens)
        n = sum(map(len, tokens))
        if self.pooling == "none":  # a vector per token, as the model gives them
            return EmbedResult(req.id, [], n, truncated, token_vectors=outputs)
        return EmbedResult(req.id, [embd_normalize(v, req.norm) for v in outputs], n, truncated)

    def _refused(self, what: str, needs: str) -> InvalidParameter:
        return InvalidParameter(
            f"model {self.spec.name!r} pools {self.pooling!r}, so it gives no {what}: that "
            f"needs a {needs}; choose the pooling with --pooling or --model-opt "
            f"{self.spec.name}:pooling=...",
            param="model",
        )

    def _pair(self, query: str, document: str, index: int) -> list[int]:
        """A (query, document) pair's tokens, as llama-server's format_prompt_rerank."""
        model = self.model
        template = model.chat_template("rerank")
        if template is not None:
            prompt = template.replace("{query}", query).replace("{document}", document)
            tokens = model.tokenize(prompt, add_special=False, parse_special=True)
        else:
            v: RankVocab = model.rank_vocab()
            q = model.tokenize(query, add_special=False, parse_special=False)
            d = model.tokenize(document, add_special=False, parse_special=False)
            tokens = [v.bos] if v.add_bos else []
            tokens += q + ([v.eos] if v.add_eos else []) + ([v.sep] if v.add_sep else [])
            tokens += d + ([v.eos] if v.add_eos else [])
        return fit_input(tokens, self.n_ctx, False, f"documents[{index}] with the query",
                         "documents")  # fmt: skip

    def _context(self) -> tuple[Context, Batch]:
        if self._ctx is None or self._batch is None:
            self._ctx = Context(
                self.model,
                ContextConfig(
                    n_ctx=self.n_ctx,
                    n_batch=self.n_ctx,
                    n_seq_max=SEQ_IDS,
                    n_threads=max(1, self.spec.threads),
                    embeddings=True,
                    # Off for embeddings: llama.cpp's CPU flash attention takes another
                    # kernel (F32 queries, not F16) for a batch of 64 tokens or more, so
                    # an input's vector would depend on the inputs decoded with it
                    # (measured up to 1e-3 apart on SmolLM2; without it, the same within
                    # 1e-7). On for rank pooling, as llama-server has it: without it,
                    # 100 documents reranked took 3.3x llama-server's time (benchmarks/
                    # rerank.py, 995 against 272 ms), with it the same (306 against 297).
                    flash_attn="auto" if self.pooling == "rank" else "off",
                    pooling=POOLINGS[self.pooling],
                    kv_unified=True,
                ),
            )
            self._batch = Batch(self._ctx.n_batch)
        return self._ctx, self._batch

    def _decode(self, inputs: list[list[int]]) -> list[Any]:
        """Each input's pooled output (not normalised; with pooling none, its tokens'),
        decoding them in packs."""
        ctx, batch = self._context()
        if self.spec.cpu_share_dir is None:
            return self._decode_on(ctx, batch, inputs)
        # The embedding context decodes beside the decode loop: it claims a share of its
        # own, so the two split this worker's threads like two workers would. Made here,
        # not at start, so workers that never embed add no file for others to probe.
        if self._share is None:
            self._share = CpuShare(Path(self.spec.cpu_share_dir), max(1, self.spec.threads))
        share = self._share
        share.set_busy(True)
        try:
            ctx.set_threads(share.threads())
            return self._decode_on(ctx, batch, inputs)
        finally:
            share.set_busy(False)

    def _decode_on(self, ctx: Context, batch: Batch, inputs: list[list[int]]) -> list[Any]:
        width = self.model.n_cls_out() if self.pooling == "rank" else self.model.n_embd()
        out: list[Any] = []
        for group in pack([len(t) for t in inputs], min(ctx.n_batch, PACK_ROWS), MAX_SEQS):
            ctx.clear()
            batch.clear()
            filled = 0
            starts = []
            for seq, i in enumerate(group):
                if batch.n % ALIGN:
                    gap = ALIGN - batch.n % ALIGN
                    batch.add_many([0] * gap, filled, FILLER, False, all_logits=True)
                    filled += gap
                starts.append(batch.n)
                batch.add_many(inputs[i], 0, seq, last_logits=True, all_logits=True)
            if ctx.decode(batch) != 0:
                raise ServerError("no room to compute the embedding")
            if self.pooling == "none":
                out += [[ctx.token_embedding(row, width) for row in range(start, start + len(inputs[i]))]
                        for start, i in zip(starts, group, strict=True)]  # fmt: skip
            else:
                out += [ctx.embedding(seq, width) for seq in range(len(group))]
        return out
