"""Engine worker process: owns one model, its context and the decode loop.

Started by the daemon as ``python -m mullama.engine.worker --fd N --spec JSON``. It talks
over the inherited socket with length-prefixed JSON frames. A reader thread validates and
tokenizes requests (llama.cpp's tokenizer is thread-safe); the main thread runs the
scheduler; an embedding thread serves embedding requests on a second context.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import MullamaError, ServerError
from ..logsetup import setup_logging
from .admission import BurstTracker
from .cpushare import CpuShare
from .embedding import Embedder
from .kvcache import HostCache
from .llama import (
    Batch,
    Context,
    ContextConfig,
    EngineError,
    Model,
    init_backend,
    lc_version,
)
from .messages import (
    HEADER_SIZE,
    Accepted,
    Cancel,
    DetokenizeRequest,
    EmbedRequest,
    Failed,
    LoadFailed,
    Ping,
    Pong,
    RankRequest,
    Ready,
    Shutdown,
    Step,
    StepRow,
    Text,
    decode_header,
    encode_frame,
    read_command,
)
from .prepare import Preparer
from .protocol import (
    CacheReport,
    GenerateRequest,
    ProtocolError,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    WorkerSpec,
)
from .scheduler import Scheduler
from .sequence import Output
from .sessions import Saved, SessionStore
from .slots import MIN_SAVE

log = logging.getLogger("mullama.worker")


class Channel:
    """Framed messages over a socket; ``send`` may be called from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._rfile = sock.makefile("rb", buffering=1 << 16)

    def send(self, message: Any) -> None:
        """``message`` is one of protocol.py's worker→daemon types."""
        data = encode_frame(message.to_wire())
        with self._lock:
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon is gone (stopped while this worker was loading, or killed):
                # nothing is left to serve, and nobody to tell.
                log.info("the daemon closed the socket: exiting")
                os._exit(0)

    def recv(self) -> Any | None:
        header = self._rfile.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return None
        n = decode_header(header)
        body = self._rfile.read(n)
        if len(body) < n:
            return None
        return orjson.loads(body)


class Worker:
    def __init__(self, spec: WorkerSpec, chan: Channel) -> None:
        self.spec = spec
        self.chan = chan
        self.model = Model(spec.path, gpu_layers=spec.gpu_layers, lora=spec.lora)
        self.info = self.model.info()
        # The daemon resolves the thread count from the CPU budget (engine/cpu.py); it is
        # this worker's share when it decodes alone.
        self.threads = max(1, spec.threads)
        share_dir = spec.cpu_share_dir
        self.share = CpuShare(Path(share_dir), self.threads) if share_dir else None
        self.flash_attn = spec.flash_attn
        self.ctx = Context(
            self.model,
            ContextConfig(
                n_ctx=spec.context_size * spec.parallel,
                n_batch=spec.batch_size,
                n_seq_max=spec.parallel,
                n_threads=self.threads,
                kv_unified=spec.kv_unified,
                flash_attn=self.flash_attn,
            ),
        )
        # A sequence must fit its KV stream (llama.cpp rounds streams up; never rely on it).
        self.ctx_per_seq = min(spec.context_size, self.ctx.n_ctx_seq)
        self.batch = Batch(self.ctx.n_batch)
        self.sched = self._scheduler()
        self._last_report: tuple[Any, ...] | None = None
        self.sessions = self._session_store()
        self._saved_key: tuple[Any, ...] | None = None
        self.prepare = Preparer(self.model, self.info, spec, self.ctx_per_seq)
        self._inbox: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self.embedder = Embedder(self.model, spec, self.ctx_per_seq, chan.send)
        self._last_stats: tuple[int, int] = (-1, -1)
        self._burst_wait_s = max(0.0, spec.burst_wait_ms) / 1000.0
        self._bursts = BurstTracker()

    def _scheduler(self) -> Scheduler:
        spec = self.spec
        n_swa, recurrent = self.model.memory_kind()
        if recurrent and spec.cache_ram:
            log.info("model %s has recurrent memory: no KV states kept in RAM", spec.name)
        return Scheduler(
            model=self.model,
            ctx=self.ctx,
            batch=self.batch,
            n_slots=spec.parallel,
            n_batch=self.ctx.n_batch,
            n_quick=self.ctx.n_ubatch,
            host_cache=HostCache(spec.cache_ram),
            n_swa=n_swa,
            recurrent=recurrent,
            streams=not spec.kv_unified,
            preempt_after=spec.preempt_after,
        )

    def _session_store(self) -> SessionStore | None:
        """Where conversations are saved across restarts (their states go to the RAM
        cache, read when first needed); None when sessions are off."""
        spec = self.spec
        if not (spec.sessions_dir and spec.session_disk > 0 and self.sched.host.enabled):
            return None
        empty, n = self.ctx.state_save(0)  # every slot is empty yet: how states begin
        sessions = SessionStore(Path(spec.sessions_dir), spec.session_disk, {
            "model": spec.model_id, "engine": lc_version(),
            "n_seq_max": spec.parallel, "kv_unified": spec.kv_unified,
            "n_ctx_seq": self.ctx.n_ctx_seq, "flash_attn": self.flash_attn,
        }, empty_state=bytes(memoryview(empty).cast("B")[:n]) if n else None)  # fmt: skip
        self.sched.host.add_saved(sessions.index())
        return sessions

    # ---- reader thread ----------------------------------------------------------

    def reader(self) -> None:
        while True:
            msg = self.chan.recv()
            if msg is None:  # the daemon is gone: nothing left to serve
                self._exit()
            try:
                cmd = read_command(msg)
            except ProtocolError as exc:
                log.error("%s", exc)
                sid = msg.get("id") if isinstance(msg, dict) else None
                if isinstance(sid, str):  # its sender must not wait for ever
                    self.chan.send(
                        Failed(sid, ServerError(f"the engine refused the request: {exc}"))
                    )
                continue
            if isinstance(cmd, GenerateRequest):
                self._on_generate(cmd)
            elif isinstance(cmd, Cancel):
                self._post("cancel", cmd.id)
            elif isinstance(cmd, EmbedRequest | RankRequest):
                self.embedder.put(cmd)
            elif isinstance(cmd, TokenizeRequest | DetokenizeRequest):
                self._on_tokenizer(cmd)
            elif isinstance(cmd, Ping):
                self.chan.send(Pong(cmd.id))
            elif isinstance(cmd, Shutdown):
                if self.sessions is None:
                    self._exit()
                # The decode thread saves the sessions, then exits; nothing more to read
                # (the daemon closes the socket next).
                self._post("shutdown", None)
                return

    def _exit(self) -> None:
        if self.share is not None:
            self.share.close()  # its file; a killed worker's is removed by the next one
        self.embedder.close()
        os._exit(0)

    def _post(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._inbox.append((kind, payload))
            self._cond.notify()

    def _failed(self, req_id: str, exc: Exception, what: str) -> None:
        """Answer a request that failed: with its own error, or, for anything else (a bug:
        it must not kill the worker), a logged server error saying ``what`` failed."""
        if not isinstance(exc, MullamaError):
            log.exception("request %s: %s", req_id, what)
            exc = ServerError(f"{what}: {exc}")
        self.chan.send(Failed(req_id, exc))

    def _on_generate(self, req: GenerateRequest) -> None:
        try:
            seq, length = self.prepare.sequence(req)
        except Exception as exc:  # noqa: BLE001 - see _failed
            self._failed(req.request_id, exc, "could not prepare the request")
            return
        self.chan.send(Accepted(req.request_id, seq.n_prompt, length.tokens, length.clamped))
        self._post("submit", seq)

    def _on_tokenizer(self, req: TokenizeRequest | DetokenizeRequest) -> None:
        """The tokenizer endpoints, answered on the reader thread (the tokenizer is
        thread-safe, and these never wait for the decode loop)."""
        try:
            if isinstance(req, DetokenizeRequest):
                tokens = self.prepare.check_ids(req.tokens, "tokens")
                self.chan.send(Text(req.id, self.model.detokenize(tokens)))
                return
            tokens = self.prepare.tokenize(req)
            pieces = [self.model.token_text(t) for t in tokens] if req.with_pieces else None
            self.chan.send(Tokens(req.id, tokens, pieces))
        except Exception as exc:  # noqa: BLE001 - see _failed
            self._failed(req.id, exc, "tokenizer request failed")

    def _save_wait(self) -> float | None:
        """How long the idle loop may sleep before the periodic save of sessions."""
        interval = self.spec.session_interval
        return interval if self.sessions is not None and interval > 0 else None

    def _save_sessions(self) -> None:
        """Write the hottest conversations to disk (on the decode thread, between steps):
        idle slots' histories first (the most recent), then the RAM cache's, newest first;
        nothing when nothing changed since the last save."""
        if self.sessions is None:
            return
        sched = self.sched
        host = sched.host
        key = (tuple(len(s.cached) for s in sched.slots), host.stats.saves, host.stats.hits)
        if key == self._saved_key:
            return
        started = time.perf_counter()
        items: list[Saved] = []
        for slot in sorted(sched.slots, key=lambda s: -s.last_used):
            if slot.seq is not None or len(slot.cached) < MIN_SAVE:
                continue
            tokens = slot.tokens()
            if not host.holds(tokens, slot.scope):
                data, size = self.ctx.state_save(slot.index)
                if data is not None:
                    items.append(Saved(tokens, data, size, scope=slot.scope))
        items += [Saved(e.tokens, e.data, e.size, e.path, e.scope) for e in host.hottest()]
        try:
            kept, used = self.sessions.write(items)
        except OSError as exc:
            log.error("sessions not saved: %s", exc)
            return
        self._saved_key = key
        log.info("sessions: %d conversations saved (%d bytes) in %.2fs",
                 kept, used, time.perf_counter() - started)  # fmt: skip

    def _cache_report(self) -> CacheReport | None:
        """What the slots hold and the RAM cache's totals, when they changed since the
        last report (None otherwise: most steps only advance running sequences)."""
        sched = self.sched
        st = sched.host.stats
        key = (
            tuple(len(s.cached) if s.seq is None else s.seq.id for s in sched.slots),
            st.saves, st.hits, st.misses, st.failed_restores, st.evictions, sched.moves,
            sched.preemptions,
        )  # fmt: skip
        if key == self._last_report and not st.save_seconds and not st.restore_seconds:
            return None
        self._last_report = key
        report = CacheReport(
            slots=[len(s.cached) if s.seq is None else s.seq.n_past for s in sched.slots],
            slot_ids=[None if s.seq is None else s.seq.id for s in sched.slots],
            ram_bytes=st.bytes, ram_entries=st.entries, ram_hits=st.hits,
            ram_misses=st.misses, ram_saves=st.saves, ram_evictions=st.evictions,
            ram_failed=st.failed_restores, moves=sched.moves, preemptions=sched.preemptions,
            save_seconds=st.save_seconds, restore_seconds=st.restore_seconds,
        )  # fmt: skip
        st.save_seconds, st.restore_seconds = [], []
        return report

    # ---- main decode loop ----------------------------------------------------------

    def run(self) -> None:
        sched = self.sched
        while True:
            starting, inbox = self._take_inbox()
            self._bursts.observe(starting, sum(1 for kind, _ in inbox if kind == "submit"))
            if any(kind == "shutdown" for kind, _ in inbox):
                self._save_sessions()
                self._exit()
            for kind, payload in inbox:
                if kind == "submit":
                    sched.submit(payload)
                elif kind == "cancel":
                    sched.cancel(payload)
            if sched.has_work():
                self._set_busy(True)
                self._fit_threads()
            try:
                outputs = sched.step()
            except EngineError as exc:
                log.error("decode failed: %s", exc)
                self._fail_all(str(exc))
                continue
            self._send_step(outputs)

    def _take_inbox(self) -> tuple[bool, list[tuple[str, Any]]]:
        """What the reader thread posted, waiting (idle) until there is work; and whether
        the engine starts from idle with it (it then waits for a burst, see
        _gather_burst)."""
        sched = self.sched
        with self._cond:
            if not self._inbox and not sched.has_work():
                self._set_busy(False)
            while not self._inbox and not sched.has_work():
                if not self._cond.wait(self._save_wait()):
                    self._save_sessions()  # idle for a save interval
            starting = not sched.has_work()
            expected = min(self._bursts.expected, len(sched.slots))
            if starting and self._burst_wait_s and expected > 1:
                self._gather_burst(expected)
            inbox, self._inbox = self._inbox, []
        return starting, inbox

    def _send_step(self, outputs: list[Output]) -> None:
        """A step's outputs and the engine's numbers, when the step did anything (or the
        numbers changed); a sequence the scheduler gave up on (no KV room) fails."""
        sched = self.sched
        stats = (sched.n_active, sched.n_queued)
        if not (outputs or sched.admitted or sched.decoded or stats != self._last_stats):
            return
        self._last_stats = stats
        rows = []
        for o in outputs:
            if o.finish == "error":
                self.chan.send(Failed(o.id, ServerError("the KV cache cannot hold this sequence")))
            else:
                rows.append(
                    StepRow(o.id, o.text, o.n_generated, o.n_prompt, o.finish, o.logprobs,
                            o.stop, o.reasoning, o.n_reasoning)
                )  # fmt: skip
        step = Step(
            rows=rows,
            admitted=[
                (s.id, (s.admitted_at or 0.0) - s.submitted_at, s.reused) for s in sched.admitted
            ],
            cache=self._cache_report(),
            active=stats[0],
            queued=stats[1],
            kv_used=sched.kv_used(),
            generated_total=sched.generated_total,
            threads=self.ctx.threads,
        )
        self.chan.send(step)

    def _set_busy(self, busy: bool) -> None:
        if self.share is not None:
            self.share.set_busy(busy)

    def _fit_threads(self) -> None:
        """Before each step: this worker's share of the CPUs among the busy workers."""
        if self.share is not None:
            n = self.share.threads()
            if n != self.ctx.threads:
                log.debug("decode threads %d -> %d", self.ctx.threads, n)
                self.ctx.set_threads(n)

    def _gather_burst(self, expected: int) -> None:
        """The engine was idle and a request came. The last start from idle came with
        ``expected`` requests (clients that take turns, e.g. a benchmark's or a batch
        job's): wait until as many are here, at most burst_wait_ms, so they share the
        first step instead of the later ones waiting a whole step. A lone client (one
        request at a time) never waits. Called with the condition held."""
        deadline = time.monotonic() + self._burst_wait_s
        while sum(1 for kind, _ in self._inbox if kind == "submit") < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _fail_all(self, why: str) -> None:
        err = ServerError(f"the engine failed: {why}")
        for seq in list(self.sched.running) + list(self.sched.waiting):
            self.chan.send(Failed(seq.id, err))
            seq.cancelled = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mullama-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    spec = WorkerSpec.from_wire(orjson.loads(args.spec))
    setup_logging(
        spec.log_level,
        spec.log_format,
        spec.log_file or None,
        static={"model": spec.name},
        tag=f"worker {os.getpid()} {spec.name}",
    )
    # A SIGHUP is the daemon's to handle (it reloads); a worker runs on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    chan = Channel(socket.socket(fileno=args.fd))
    init_backend(verbose=spec.log_level == "debug")
    started = time.monotonic()
    try:
        worker = Worker(spec, chan)
    except (EngineError, OSError) as exc:
        chan.send(LoadFailed(ServerError(str(exc))))
        sys.exit(1)
    info = worker.info
    chan.send(
        Ready(
            WorkerInfo(
                n_ctx_train=info.n_ctx_train,
                n_embd=info.n_embd,
                n_params=info.n_params,
                size_bytes=info.size_bytes,
                description=info.description,
                context_size=worker.ctx_per_seq,
                parallel=len(worker.sched.slots),
                kv_size=worker.ctx.n_ctx,
                threads=worker.threads,
                load_seconds=time.monotonic() - started,
                n_vocab=info.n_vocab,
                bos_token=info.bos_text,
                eos_token=info.eos_text,
                add_bos=info.add_bos,
                chat_template=info.chat_template,
                flash_attn=worker.flash_attn,
                pooling=worker.embedder.pooling,
            )
        )
    )
    threading.Thread(target=worker.reader, name="reader", daemon=True).start()
    threading.Thread(target=worker.embedder.run, name="embedder", daemon=True).start()
    worker.run()


if __name__ == "__main__":
    main()
