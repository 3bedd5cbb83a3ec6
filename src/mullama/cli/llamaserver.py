"""llama-server's command line for ``mullama serve``: its spellings with its meaning, so a
deployment's ``llama-server --host 0.0.0.0 --port 8080 -m model.gguf -c 4096 --parallel
4 --cont-batching --metrics`` runs with ``mullama serve`` in its place.

``translate`` rewrites llama-server's flags into Mullama's before the parser sees them.
The differences in meaning are handled here: ``-c`` is the *total* context, divided
among the slots as llama-server does (Mullama's ``--context-size`` is per sequence);
``-a`` names the ``-m`` model; ``-fa`` alone means on; ``--api-key`` is a key given on
the command line (Mullama takes it from the environment otherwise); ``LLAMA_API_KEY`` is read as
``MULLAMA_API_KEY``; ``-n`` (the most tokens an answer may generate) is ``--max-tokens``;
the sampling defaults (``--temp``, ``--top-k``, ``--top-p``, ``--min-p``,
``--repeat-penalty``, ``--repeat-last-n``, ``--seed``) are the ``-m`` models' request
defaults (``--model-opt NAME:temperature=...``), under a request's own values as in
llama-server. ``--reasoning-format`` (none, deepseek, auto) and ``--reasoning-budget`` are
Mullama's flags of the same meaning; ``--chat-template-kwargs`` with ``enable_thinking`` or
``thinking`` is the ``-m`` models' thinking default (``--model-opt NAME:think=...``).
``--lora FNAME[,...]`` and ``--lora-scaled FNAME:SCALE[,...]`` (older llama-servers':
``FNAME SCALE``) are Mullama's ``--lora PATH[:scale]``: adapters of the ``-m`` model. Flags
for what Mullama always does are accepted and change nothing. ``--pooling`` is Mullama's flag of
the same name; ``--rerank`` (``--reranking``) is ``--pooling rank``. A llama-server flag with no
counterpart is an error that says what to do instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClientError
from ..models.aliases import is_local_path

# llama-server flag -> Mullama flag, same value.
RENAMED = {
    "--host": "--http-addr",
    "--port": "--http-port",
    "-np": "--parallel",
    "-ngl": "--gpu-layers",
    "--n-gpu-layers": "--gpu-layers",
    "--gpu-layers": "--gpu-layers",
    "-t": "--threads",
    "-b": "--batch-size",
}
# Behaviour Mullama always has: accepted, nothing to do.
ALWAYS = {
    "--cont-batching": "continuous batching is always on",
    "-cb": "continuous batching is always on",
    "--metrics": "Prometheus metrics are always served at /metrics",
    "--jinja": "chat templates are always rendered with Jinja",
    "--no-webui": "there is no web page at the root",
}
# Flash attention: an on/off/auto value, optional (alone, older llama-servers' switch: on).
FLASH_ATTN = {"-fa", "--flash-attn"}
# llama-server flags with no counterpart here, and what to do instead.
INSTEAD = {
    "-hf": "pull the model first (`mullama pull REPO`), then serve it by name",
    "--hf-repo": "pull the model first (`mullama pull REPO`), then serve it by name",
    "--chat-template": "create a custom model with its own template (`mullama create`)",
    "--chat-template-file": "create a custom model with its own template (`mullama create`)",
    "--embedding": "embeddings are always served (/v1/embeddings, /api/embed)",
    "--embeddings": "embeddings are always served (/v1/embeddings, /api/embed)",
    "--slots": "slots are always shown in /api/system/status",
    "-ub": "the micro-batch follows --batch-size (at most 512)",
    "--ubatch-size": "the micro-batch follows --batch-size (at most 512)",
    "--ssl-key-file": "use --tls-key",
    "--ssl-cert-file": "use --tls-cert",
    "-to": "use --request-timeout",
    "--timeout": "use --request-timeout",
    "--threads-http": "the HTTP server is asynchronous; there is no thread pool to size",
    "--lora-init-without-apply": "adapters are applied from the start (--lora PATH:0 for "
    "a scale of 0); changing them at run time is not served yet",
}
# LoRA adapters: --lora FNAME[,FNAME...] (scale 1) and --lora-scaled FNAME:SCALE[,...]
# (older llama-servers: --lora-scaled FNAME SCALE) become Mullama's --lora PATH[:scale].
LORA = {"--lora", "--lora-scaled"}
# llama-server switch -> Mullama switch.
SWITCHES = {"-kvu": "--kv-unified"}
# llama-server's reranking switch: the -m model is a reranker (its embeddings pool rank).
RERANK = {"--rerank", "--reranking"}
# The most tokens an answer may generate (-1: no limit, -2: until the context is full).
N_PREDICT = {"-n", "--n-predict", "--predict"}
# llama-server's sampling defaults -> the request default each -m model gets.
SAMPLING = {
    "--temp": "temperature",
    "--top-k": "top_k",
    "--top-p": "top_p",
    "--min-p": "min_p",
    "--repeat-penalty": "repeat_penalty",
    "--repeat-last-n": "repeat_last_n",
    "-s": "seed",
    "--seed": "seed",
}
# Thinking on or off by default: the chat_template_kwargs keys that say it.
THINK_KWARGS = ("enable_thinking", "thinking")
_VALUE_FLAGS = {"-m", "--model", "-a", "--alias", "-c", "--ctx-size", "--api-key", *RENAMED,
                *N_PREDICT, *SAMPLING, "--reasoning-format", "--chat-template-kwargs"}  # fmt: skip


def translate(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """``serve``'s arguments with llama-server's flags in Mullama's spelling, and the
    settings that have no flag (the API key). Mullama's own flags pass unchanged."""
    translation = _Translation()
    i = 0
    while i < len(argv):
        i = translation.read(argv, i)
    return translation.finish(dict(os.environ if env is None else env))


@dataclass
class _Translation:
    """One command line being translated: Mullama's arguments so far, and what
    llama-server's flags said that becomes arguments only once all are read."""

    out: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # settings with no flag
    models: list[str] = field(default_factory=list)
    alias: str | None = None
    ctx_total: int | None = None
    parallel: int | None = None
    # The -m models' defaults: (flag, --model-opt key, value).
    sampling: list[tuple[str, str, str]] = field(default_factory=list)

    def read(self, argv: list[str], i: int) -> int:
        """Translate the argument at ``i``; the index of the next one."""
        arg = argv[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in ALWAYS:
            return i + 1
        if flag in FLASH_ATTN:
            return self._flash_attn(argv, i, flag, inline if eq else None)
        if flag in INSTEAD:
            raise ClientError(f"{flag} (a llama-server flag) has no counterpart: {INSTEAD[flag]}")
        if flag in SWITCHES:
            self.out.append(SWITCHES[flag])
            return i + 1
        if flag in RERANK:
            self.out += ["--pooling", "rank"]
            return i + 1
        if flag in LORA:
            return self._lora(argv, i, flag, inline if eq else None)
        if flag not in _VALUE_FLAGS:
            self.out.append(arg)
            return i + 1
        if eq:
            self._take(flag, inline)
            return i + 1
        if i + 1 >= len(argv):
            raise ClientError(f"{flag} needs a value")
        self._take(flag, argv[i + 1])
        return i + 2

    def _flash_attn(self, argv: list[str], i: int, flag: str, inline: str | None) -> int:
        """-fa with on, off or auto, given or not (alone: on)."""
        nxt = argv[i + 1] if inline is None and i + 1 < len(argv) else "-"
        has_value = not nxt.startswith("-")
        value = inline if inline is not None else nxt if has_value else "on"
        if value not in ("on", "off", "auto"):
            raise ClientError(f"{flag} takes on, off or auto (alone: on), not {value!r}")
        self.out += ["--flash-attn", value]
        return i + 2 if has_value else i + 1

    def _lora(self, argv: list[str], i: int, flag: str, inline: str | None) -> int:
        """--lora and --lora-scaled, each adapter one Mullama --lora PATH[:scale]."""
        if inline is None and i + 1 >= len(argv):
            raise ClientError(f"{flag} needs a value")
        value, nxt = (inline, i + 1) if inline is not None else (argv[i + 1], i + 2)
        items = [item.strip() for item in value.split(",") if item.strip()]
        if flag == "--lora-scaled" and len(items) == 1 and ":" not in items[0]:
            scale = argv[nxt] if inline is None and nxt < len(argv) else ""
            if not _is_number(scale):
                raise ClientError("--lora-scaled takes FNAME:SCALE[,FNAME:SCALE...]")
            items, nxt = [f"{items[0]}:{scale}"], nxt + 1  # the older FNAME SCALE
        for item in items:
            _, sep, scale = item.rpartition(":")
            if flag == "--lora-scaled" and not (sep and _is_number(scale)):
                raise ClientError(f"--lora-scaled {item!r}: expected FNAME:SCALE")
            self.out += ["--lora", item]
        return nxt

    def _take(self, flag: str, value: str) -> None:
        """A flag that takes a value, with its value."""
        if flag in ("-m", "--model"):
            self.models.append(value)
        elif flag in ("-a", "--alias"):
            self.alias = value
        elif flag in ("-c", "--ctx-size"):
            self.ctx_total = _int(flag, value)
        elif flag in N_PREDICT:
            n = _int(flag, value)
            if n < -2 or n == 0:
                raise ClientError(
                    f"{flag} takes a positive number of tokens, -1 (no limit) or -2 (until "
                    f"the context is full), not {value!r}"
                )
            self.out += ["--max-tokens", str(max(n, 0))]
        elif flag in SAMPLING:
            if not (SAMPLING[flag] == "seed" and value.strip() == "-1"):  # -1: random
                self.sampling.append((flag, SAMPLING[flag], value))
        elif flag == "--reasoning-format":
            if value == "deepseek-legacy":
                raise ClientError(
                    "--reasoning-format deepseek-legacy (the thinking both apart and in the "
                    "answer) has no counterpart: use deepseek (apart) or none (in the answer)"
                )
            self.out += [flag, value]
        elif flag == "--chat-template-kwargs":
            self.sampling.append((flag, "think", _think_kwarg(value)))
        elif flag == "--api-key":
            if "," in value:
                raise ClientError(
                    "--api-key with several keys: list them in a file (--api-key-file, one "
                    "key per line as llama-server's, or Mullama's YAML with scopes)"
                )
            self.values["api_key"] = value
        else:
            target = RENAMED[flag]
            if target == "--parallel":
                self.parallel = _int(flag, value)
            self.out += [target, value]

    def finish(self, env: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
        """The arguments and settings, with the models, their sampling defaults, the
        context per slot and the API key from the environment added."""
        self._add_models()
        self._add_context(env)
        if "api_key" not in self.values and "MULLAMA_API_KEY" not in env:
            if env.get("LLAMA_API_KEY"):
                self.values["api_key"] = env["LLAMA_API_KEY"]
        return self.out, self.values

    def _add_models(self) -> None:
        """-m (named by -a) and the sampling defaults each one gets."""
        models = self.models
        if self.alias is not None:
            if len(models) != 1:
                raise ClientError("-a/--alias names the one -m model; give exactly one -m with it")
            models = [f"{self.alias}={models[0]}"]
        for model in models:
            self.out += ["--model", model]
        if self.sampling and not models:
            flag, key, value = self.sampling[0]
            raise ClientError(
                f"{flag} sets the -m model's default: give -m with it, or use "
                f"--model-opt NAME:{key}={value}"
            )
        for model in models:
            for _, key, value in self.sampling:
                self.out += ["--model-opt", f"{served_name(model)}:{key}={value}"]

    def _add_context(self, env: dict[str, str]) -> None:
        """-c is the total context: each of the slots gets its share."""
        if self.ctx_total is None or self.ctx_total <= 0:
            return
        parallel = self.parallel
        if parallel is None:
            parallel = _parallel_given(self.out) or int(env.get("MULLAMA_PARALLEL", "4"))
        per_seq = self.ctx_total // max(1, parallel)
        if per_seq < 64:
            raise ClientError(
                f"-c {self.ctx_total} shared by {parallel} slots leaves {per_seq} tokens "
                "each; give a larger -c or fewer --parallel slots"
            )
        self.out += ["--context-size", str(per_seq)]


def served_name(spec: str) -> str:
    """The name a ``--model`` spec is served under (models/registry.py resolve): NAME of
    NAME=SPEC, a file's stem, or the name as given."""
    name, eq, _ = spec.partition("=")
    if eq:
        return name.strip()
    path = Path(spec).expanduser()
    if is_local_path(spec) or path.is_file():
        return path.stem
    return spec


def _think_kwarg(value: str) -> str:
    """``--chat-template-kwargs``' thinking switch, as a --model-opt value (true/false);
    other template variables are a request's own (its chat_template_kwargs)."""
    try:
        kwargs = json.loads(value)
    except ValueError:
        raise ClientError(f"--chat-template-kwargs takes a JSON object, not {value!r}") from None
    if not isinstance(kwargs, dict):
        raise ClientError(f"--chat-template-kwargs takes a JSON object, not {value!r}")
    other = sorted(set(kwargs) - set(THINK_KWARGS))
    switch = {kwargs[k] for k in THINK_KWARGS if k in kwargs}
    if other or len(switch) != 1 or not isinstance(next(iter(switch)), bool):
        raise ClientError(
            "--chat-template-kwargs: only a default for thinking is taken here "
            f"({' or '.join(THINK_KWARGS)}: true or false); other template variables go in "
            "each request's chat_template_kwargs"
        )
    return "true" if switch.pop() else "false"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClientError(f"{flag} takes a whole number, not {value!r}") from None


def _parallel_given(args: list[str]) -> int | None:
    """The value of a ``--parallel`` already in Mullama's spelling."""
    for k, arg in enumerate(args):
        if arg == "--parallel" and k + 1 < len(args):
            return _int(arg, args[k + 1])
        if arg.startswith("--parallel="):
            return _int("--parallel", arg.partition("=")[2])
    return None
