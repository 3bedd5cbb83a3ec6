"""Thin, typed wrappers over llama-cpp-python's low-level ctypes API.

This is the only module in Mullama that imports ``llama_cpp``. Everything here runs in
the engine worker process. Every ctypes call releases the GIL.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import llama_cpp as lc
import numpy as np

from .constraint import Constraint
from .kvcache import state_buffer
from .protocol import SamplingParams

_LOG_VERBOSE = False
_native_log = logging.getLogger("mullama.llama")
# ggml's log levels, from the ggml.h the wheel ships (enum ggml_log_level): 0 none (an
# untagged line), 1 debug, 2 info, 3 warn, 4 error, 5 a continuation of the last message.
# llama-cpp-python's own _logger.py lists an older order (1 info .. 4 debug): copied here,
# it made every llama.cpp warning an error line ("using full-size SWA cache", "control-
# looking token ... was not control-type" at each Gemma 3 start) and every error a debug
# line that was never shown.
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
           4: logging.ERROR}  # fmt: skip
_CONT = 5
_pending: list[str] = []
_pending_level = [logging.INFO]
# Warnings llama.cpp logs of a choice Mullama makes on purpose (no fault): logged at INFO.
# The embedding context asks for the pooling chosen for it (mean on models whose default
# is none; --pooling): llama.cpp warns that it differs from the model's.
_EXPECTED = ("] was specified",)


def native_level(ggml_level: int, previous: int) -> int:
    """The logging level of one piece of llama.cpp's log: a continuation keeps the level
    of the message it continues."""
    if ggml_level == _CONT:
        return previous
    return _LEVELS.get(ggml_level, logging.INFO)


@lc.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Warnings and errors always, everything else only in verbose (debug) mode. Lines go
    # through Python logging, so they come out in the configured format (JSON or text).
    try:
        _pending_level[0] = native_level(level, _pending_level[0])
        if not (_LOG_VERBOSE or _pending_level[0] >= logging.WARNING):
            return
        piece = text.decode("utf-8", "replace")
        _pending.append(piece)
        if piece.endswith("\n"):
            line = "".join(_pending).rstrip()
            _pending.clear()
            if line:
                lvl = _pending_level[0]
                if lvl == logging.WARNING and any(m in line for m in _EXPECTED):
                    lvl = logging.INFO
                _native_log.log(lvl, "%s", line)
    except Exception:  # noqa: BLE001 - logging must never raise into C
        pass


def lc_version() -> str:
    """llama-cpp-python's version: saved KV states are only restored into the same."""
    return str(getattr(lc, "__version__", ""))


def init_backend(verbose: bool = False) -> None:
    global _LOG_VERBOSE
    _LOG_VERBOSE = verbose
    lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
    lc.llama_backend_init()


class EngineError(Exception):
    """A failure inside llama.cpp that is not the client's fault."""


@dataclass(frozen=True)
class ModelInfo:
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_params: int
    size_bytes: int
    description: str
    chat_template: str | None
    bos_text: str
    eos_text: str
    add_bos: bool


@dataclass(frozen=True)
class RankVocab:
    bos: int
    eos: int  # the separator when the vocabulary has no end token
    sep: int
    add_bos: bool
    add_eos: bool
    add_sep: bool


class Model:
    """A loaded ``llama_model`` and its vocabulary."""

    def __init__(
        self, path: str, gpu_layers: int = 0, lora: list[tuple[str, float]] | None = None
    ) -> None:
        params = lc.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.path = path
        self.ptr = lc.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise EngineError(f"llama.cpp could not load model file {path}")
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self._pieces: dict[int, bytes] = {}
        # End-of-generation tokens, found once (~16 ms for a 49k vocabulary): checked for
        # every generated token, and masked for ignore_eos.
        n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.eog = frozenset(t for t in range(n_vocab) if lc.llama_vocab_is_eog(self.vocab, t))
        # LoRA adapters (path, scale), loaded once: every context made from this model
        # applies them (llama.cpp sets adapters per context, never per sequence).
        self.adapters = [(self._load_lora(p), scale) for p, scale in lora or ()]

    def _load_lora(self, path: str) -> Any:
        adapter = lc.llama_adapter_lora_init(self.ptr, path.encode())
        if not adapter:
            raise EngineError(f"llama.cpp could not load LoRA adapter {path} for this model")
        return adapter

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1024)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def info(self) -> ModelInfo:
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, desc, len(desc))
        bos = lc.llama_vocab_bos(self.vocab)
        eos = lc.llama_vocab_eos(self.vocab)
        return ModelInfo(
            n_ctx_train=lc.llama_model_n_ctx_train(self.ptr),
            n_embd=lc.llama_model_n_embd(self.ptr),
            n_vocab=lc.llama_vocab_n_tokens(self.vocab),
            n_params=lc.llama_model_n_params(self.ptr),
            size_bytes=lc.llama_model_size(self.ptr),
            description=desc.value.decode("utf-8", "replace"),
            chat_template=self.meta("tokenizer.chat_template"),
            bos_text=self.token_text(bos) if bos >= 0 else "",
            eos_text=self.token_text(eos) if eos >= 0 else "",
            add_bos=bool(lc.llama_vocab_get_add_bos(self.vocab)),
        )

    def n_embd(self) -> int:
        return int(lc.llama_model_n_embd(self.ptr))

    def n_cls_out(self) -> int:
        """The classifier head's outputs (a reranker's scores per pair); 1 at least."""
        return max(1, int(lc.llama_model_n_cls_out(self.ptr)))

    def chat_template(self, name: str) -> str | None:
        """The GGUF's named chat template (``tokenizer.chat_template.NAME``), or None."""
        ptr = lc.llama_model_chat_template(self.ptr, name.encode())
        return ptr.decode("utf-8", "replace") if ptr else None

    def rank_vocab(self) -> RankVocab:
        """The special tokens llama-server puts around a reranker's (query, document)."""
        v = self.vocab
        eos = lc.llama_vocab_eos(v)
        sep = lc.llama_vocab_sep(v)
        return RankVocab(
            bos=lc.llama_vocab_bos(v), eos=eos if eos >= 0 else sep, sep=sep,
            add_bos=bool(lc.llama_vocab_get_add_bos(v)),
            add_eos=bool(lc.llama_vocab_get_add_eos(v)),
            add_sep=bool(lc.llama_vocab_get_add_sep(v)),
        )  # fmt: skip

    def memory_kind(self) -> tuple[int, bool]:
        """The sliding-attention window (0: none) and whether the model's memory is
        recurrent or hybrid (then a sequence cannot be cut back to a prefix)."""
        n_swa = int(lc.llama_model_n_swa(self.ptr))
        return n_swa, bool(
            lc.llama_model_is_recurrent(self.ptr) or lc.llama_model_is_hybrid(self.ptr)
        )

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            raise EngineError("tokenization failed")
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached: the vocabulary never changes). Safe from any
        thread: a miss converts into a buffer of its own (the reader thread's tokenizer
        endpoints run beside the decode loop)."""
        key = token if not special else -token - 1
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        out = buf.raw[:n]
        self._pieces[key] = out
        return out

    def guidance_tokenizer(self) -> Any:
        """llguidance's tokenizer of this vocabulary (~0.2 s for 49k tokens: build once),
        as llguidance.llamacpp builds it but with llama.cpp's current attribute call.
        Control tokens (and user-defined ones that look like ``<...>``) are marked special
        (a 0xff prefix), so a grammar can name them and text never matches them. Every
        end-of-generation token ends a complete value, not only EOS."""
        from llguidance import LLTokenizer

        pieces: list[bytes] = []
        for token in range(lc.llama_vocab_n_tokens(self.vocab)):
            piece = self.piece(token, special=True)
            attr = lc.llama_vocab_get_attr(self.vocab, token)
            if attr & lc.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED
                and piece.startswith(b"<")
                and piece.endswith(b">")
            ):
                piece = b"\xff" + piece
            pieces.append(piece)
        tokenize = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
            tokens=pieces, vocab_ptr=self.vocab, tokenize_fptr=tokenize,
            eos_token=sorted(self.eog), slices=None,
        )  # fmt: skip

    def is_eog(self, token: int) -> bool:
        return token in self.eog

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens``, special tokens shown as their text (safe from any
        thread: its own buffers)."""
        arr = (lc.llama_token * len(tokens))(*tokens)
        cap = 8 * len(tokens) + 16
        buf = ctypes.create_string_buffer(cap)
        n = lc.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, True)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = lc.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, True)
        if n < 0:
            raise EngineError("detokenization failed")
        return buf.raw[:n].decode("utf-8", "replace")


class Batch:
    """A ``llama_batch`` with a fixed capacity; ``add`` refuses to overflow it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch = lc.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        i = self.n
        if i >= self.capacity:
            raise EngineError("batch capacity exceeded")
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        return i

    def add_many(
        self,
        tokens: list[int],
        start_pos: int,
        seq: int,
        last_logits: bool,
        all_logits: bool = False,
    ) -> int:
        """Add a run of tokens of one sequence; returns the row of the last one. Logits for
        the last row (``last_logits``) or for every row (``all_logits``)."""
        i0 = self.n
        n = len(tokens)
        if i0 + n > self.capacity:
            raise EngineError("batch capacity exceeded")
        b = self._batch
        tok, pos, nseq, seqid, logit = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for k in range(n):
            i = i0 + k
            tok[i] = tokens[k]
            pos[i] = start_pos + k
            nseq[i] = 1
            seqid[i][0] = seq
            logit[i] = all_logits
        if last_logits and n:
            logit[i0 + n - 1] = 1
        self.n = i0 + n
        return i0 + n - 1

    @property
    def raw(self) -> lc.llama_batch:
        self._batch.n_tokens = self.n
        return self._batch

    def close(self) -> None:
        lc.llama_batch_free(self._batch)


@dataclass
class ContextConfig:
    n_ctx: int
    n_batch: int
    n_seq_max: int
    n_threads: int
    embeddings: bool = False
    pooling: int = lc.LLAMA_POOLING_TYPE_UNSPECIFIED
    # False: one KV stream of n_ctx / n_seq_max cells per sequence, and attention reads
    # only the sequence's own cells. True: one pool shared by all sequences, and every
    # token's attention spans the used cells of all of them (masked). Measured on
    # SmolLM2-135M, 8 sequences of 128 tokens, 2 cores: 186-198 tok/s per-sequence vs
    # 173-178 tok/s unified (the batch must be written in sequence-id order; see scheduler).
    kv_unified: bool = False
    # Flash attention: "on", "off" or "auto" (llama.cpp decides per device). With it off
    # the V cache is stored transposed, so saved states restore only into a context with
    # the same setting.
    flash_attn: str = "auto"


FLASH_ATTN = {
    "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class Context:
    """A ``llama_context`` whose KV cache holds up to n_seq_max sequences."""

    def __init__(self, model: Model, cfg: ContextConfig) -> None:
        p = lc.llama_context_default_params()
        p.n_ctx = cfg.n_ctx
        p.n_batch = cfg.n_batch
        p.n_ubatch = min(cfg.n_batch, 512) if not cfg.embeddings else cfg.n_batch
        p.n_seq_max = cfg.n_seq_max
        p.n_threads = cfg.n_threads
        p.n_threads_batch = cfg.n_threads
        p.kv_unified = cfg.kv_unified
        p.flash_attn_type = FLASH_ATTN[cfg.flash_attn]
        p.no_perf = True
        if cfg.embeddings:
            p.embeddings = True
            p.pooling_type = cfg.pooling
        self.model = model
        self.ptr = lc.llama_init_from_model(model.ptr, p)
        if not self.ptr:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.mem = lc.llama_get_memory(self.ptr)
        self.n_ctx = lc.llama_n_ctx(self.ptr)
        self.n_ctx_seq = lc.llama_n_ctx_seq(self.ptr)  # padded up, never below the ask
        self.n_batch = lc.llama_n_batch(self.ptr)
        self.n_ubatch = lc.llama_n_ubatch(self.ptr)
        self.n_vocab = lc.llama_vocab_n_tokens(model.vocab)
        self.threads = cfg.n_threads
        if model.adapters:
            self._set_adapters(model.adapters)

    def _set_adapters(self, adapters: list[tuple[Any, float]]) -> None:
        n = len(adapters)
        handles = (lc.llama_adapter_lora_p_ctypes * n)(*(a for a, _ in adapters))
        scales = (ctypes.c_float * n)(*(s for _, s in adapters))
        if lc.llama_set_adapters_lora(self.ptr, handles, n, scales) != 0:
            raise EngineError("llama.cpp could not set the LoRA adapters on a context")

    def set_threads(self, n: int) -> None:
        """Threads for the next decodes (generation and prompt alike); takes effect at
        once, with no cost of its own (llama.cpp's OpenMP team is sized per graph)."""
        lc.llama_set_n_threads(self.ptr, n, n)
        self.threads = n

    def close(self) -> None:
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None

    def decode(self, batch: Batch) -> int:
        """0: done; 1: no room in the KV cache (the caller frees some and retries)."""
        rc = lc.llama_decode(self.ptr, batch.raw)
        if rc < 0 or rc == 2:
            raise EngineError(f"llama_decode failed with code {rc}")
        return rc

    def logits(self, row: int) -> np.ndarray:
        """The logits of a batch row that asked for them: a view of llama.cpp's buffer,
        valid until the next decode."""
        ptr = lc.llama_get_logits_ith(self.ptr, row)
        if not ptr:
            raise EngineError(f"no logits for batch row {row}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(lc.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_cp_whole(self, src: int, dst: int) -> None:
        """Copy every cell of ``src`` to ``dst`` (dst's own cells go). With one KV stream
        per sequence only a whole copy is allowed (a range aborts the process); the
        cells' metadata moves now, their data at the next decode."""
        lc.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def seq_pos_min(self, seq: int) -> int:
        """The lowest position ``seq`` holds; -1 when it holds none."""
        return int(lc.llama_memory_seq_pos_min(self.mem, seq))

    def seq_pos_max(self, seq: int) -> int:
        return int(lc.llama_memory_seq_pos_max(self.mem, seq))

    def state_save(self, seq: int) -> tuple[Any, int]:
        """``seq``'s KV cells as a buffer (restorable into any sequence of a context with
        the same settings), and its length; (None, 0) when there is nothing to save."""
        size = lc.llama_state_seq_get_size(self.ptr, seq)
        if size <= 0:
            return None, 0
        buf = state_buffer(size)
        written = lc.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return (buf, int(written)) if written else (None, 0)

    def state_restore(self, seq: int, data: Any, size: int) -> bool:
        """Put a saved state into ``seq`` (which must be empty); all or nothing."""
        return bool(lc.llama_state_seq_set_data(self.ptr, data, size, seq))

    def clear(self) -> None:
        lc.llama_memory_clear(self.mem, True)

    def embedding(self, seq: int, width: int) -> list[float]:
        """``seq``'s pooled output of the last decode (an embedding of ``width`` floats,
        or a reranker's scores), as the model gave it (not normalised)."""
        ptr = lc.llama_get_embeddings_seq(self.ptr, seq)
        if not ptr:
            raise EngineError("the model produced no pooled embedding")
        return ptr[:width]  # type: ignore[no-any-return]

    def token_embedding(self, row: int, width: int) -> list[float]:
        """The output of batch row ``row`` of the last decode (pooling none)."""
        ptr = lc.llama_get_embeddings_ith(self.ptr, row)
        if not ptr:
            raise EngineError(f"no embedding for batch row {row}")
        return ptr[:width]  # type: ignore[no-any-return]


class Sampler:
    """One per-request sampler chain; ``sample`` also accepts the token."""

    def __init__(
        self, model: Model, cfg: SamplingParams, constraint: Constraint | None = None
    ) -> None:
        """``constraint``: the grammar the output must follow (engine/constraint.py).
        ``cfg.ignore_eos`` bans the end-of-generation tokens: generation runs to
        max_tokens with real text, as llama-server does it."""
        self.ptr = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self.n_vocab = lc.llama_vocab_n_tokens(model.vocab)
        self.constraint = constraint
        penalties = (
            cfg.repeat_penalty != 1.0 or cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0
        )
        # Plain greedy (no penalties) is the argmax of the logits row; numpy finds it in
        # ~6 us, the chain in ~140 us (it first copies the whole vocabulary into a
        # candidates array). Both take the first of equal maxima.
        self.argmax_only = cfg.temperature <= 0.0 and not penalties
        # The chain's penalties remember every token it picks, so with penalties a
        # constrained row is masked before the one pick, not after a rejected one.
        self.mask_first = penalties
        self.banned = np.array(sorted(model.eog) if cfg.ignore_eos else [], dtype=np.intp)
        add = self._add
        if len(self.banned):
            biases = (lc.llama_logit_bias * len(self.banned))()
            for i, tok in enumerate(self.banned.tolist()):
                biases[i].token = tok
                biases[i].bias = -math.inf
            add(lc.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases))
        if penalties:
            add(
                lc.llama_sampler_init_penalties(
                    lc.llama_vocab_n_tokens(model.vocab),
                    cfg.repeat_last_n,
                    cfg.repeat_penalty,
                    cfg.frequency_penalty,
                    cfg.presence_penalty,
                )
            )
        if cfg.temperature <= 0.0:
            add(lc.llama_sampler_init_greedy())
            return
        if cfg.top_k > 0:
            add(lc.llama_sampler_init_top_k(cfg.top_k))
        if cfg.typical_p < 1.0:  # llama.cpp's order (common/sampling): top-k, typical, top-p
            add(lc.llama_sampler_init_typical(cfg.typical_p, 1))
        if cfg.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(cfg.top_p, 1))
        if cfg.min_p > 0.0:
            add(lc.llama_sampler_init_min_p(cfg.min_p, 1))
        add(lc.llama_sampler_init_temp(cfg.temperature))
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, smpl: lc.llama_sampler_p) -> None:
        lc.llama_sampler_chain_add(self.ptr, smpl)

    def _pick(self, ctx: Context, row: int) -> int:
        if self.argmax_only:
            values = ctx.logits(row)
            if len(self.banned):
                values[self.banned] = -np.inf  # llama.cpp's own buffer, read once
            return int(values.argmax())
        return lc.llama_sampler_sample(self.ptr, ctx.ptr, row)

    def sample(self, ctx: Context, row: int, constrained: bool = True) -> int:
        """The next token. Constrained: picked from the raw row first, and only if the
        grammar rejects it is the row masked and the token picked again. ``constrained``
        False: the constraint waits (the reply's thinking, before the answer it governs)."""
        c = self.constraint
        if c is None or not constrained:
            return self._pick(ctx, row)
        if self.mask_first:
            c.mask(ctx.logits(row))
            token = self._pick(ctx, row)
        else:
            token = self._pick(ctx, row)
            if not c.allows(token):
                c.mask(ctx.logits(row))
                token = self._pick(ctx, row)
        c.accept(token)
        return token

    def accept(self, token: int) -> None:
        """A token the engine wrote itself instead of sampling one (a thinking block's
        marker): the chain remembers it (penalties) as a sampled one; the constraint does
        not see it."""
        lc.llama_sampler_accept(self.ptr, token)

    @property
    def done(self) -> bool:
        """The constraint is complete: nothing more may be generated."""
        return self.constraint is not None and self.constraint.done

    def close(self) -> None:
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
