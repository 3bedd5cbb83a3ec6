"""Model listings in Ollama's shapes: /api/tags, /api/ps, /api/show."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ...engine.protocol import SamplingParams
from ...errors import MullamaError
from ...models.adapters import card as adapters_card
from ...models.gguf import GGUFInfo, human_params
from ...models.residency import ModelState, ServedModel
from ...models.store import ModelStore
from ..profiles import Profile, profile_of
from ..thinking import probe
from .schemas import OLLAMA_DEFAULTS
from .service import iso_time

if TYPE_CHECKING:
    from ...models.entry import ModelEntry
    from ...models.manager import ModelManager
    from ...models.router import Target


log = logging.getLogger(__name__)


def _details(info: GGUFInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": human_params(info.parameter_count),
        "quantization_level": info.quantization,
    }


_REMOTE_DETAILS = {"parent_model": "", "format": "remote", "family": "", "families": [],
                   "parameter_size": "", "quantization_level": ""}  # fmt: skip
_FOREVER = timedelta(days=365 * 100)  # Ollama's "never expires"


class OllamaModels:
    def __init__(self, models: ModelManager, store: ModelStore | None = None) -> None:
        self.models = models
        self.store = store

    async def _entry(self, name: str | Target) -> tuple[ModelEntry, GGUFInfo, str]:
        entry = await asyncio.to_thread(self.models.find, name)
        info = await asyncio.to_thread(entry.gguf)
        digest = await asyncio.to_thread(entry.digest)
        return entry, info, digest

    def _names(self) -> list[str]:
        names = list(self.models.names)
        if self.store is not None:
            names += [n for n in self.store.names() if n not in names]
        return names

    def _remote_tag(self, remote: Any) -> dict[str, Any]:
        return {
            "name": remote.name,
            "model": remote.name,
            "modified_at": iso_time(self.models.started_at),
            "size": 0,
            "digest": remote.digest.removeprefix("sha256:"),
            "details": _REMOTE_DETAILS,
            "remote_model": remote.upstream_model,
        }

    def _remote_state(self, remote: Any) -> dict[str, Any]:
        """A remote model as /api/ps lists it: always loaded (its engine runs elsewhere),
        its requests and its replicas (by index: no upstream URL is shown)."""
        return {
            **self._remote_tag(remote),
            "size_vram": 0,
            "memory_estimate": 0,
            "expires_at": iso_time((datetime.now(UTC) + _FOREVER).timestamp()),
            "pinned": True,
            "loaded": True,
            "pid": None,
            "context_length": 0,
            "parallel": remote.limit * len(remote.replicas),
            "active_requests": remote.inflight,
            "active_sequences": remote.inflight,
            "queued_sequences": remote.waiting,
            "replicas": [r.describe() for r in remote.replicas],
        }

    async def tags(self) -> list[dict[str, Any]]:
        out = [self._remote_tag(r) for r in self.models.remotes.values()]
        for name in await asyncio.to_thread(self._names):
            try:
                entry, info, digest = await self._entry(name)
            except MullamaError as exc:  # one broken model must not hide the others
                log.warning("cannot list model %s: %s", name, exc.message)
                continue
            out.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": iso_time(entry.modified),
                    "size": entry.size,
                    "digest": digest,
                    "details": _details(info),
                }
            )
        return out

    async def ps(self) -> list[dict[str, Any]]:
        """Loaded models, in Ollama's shape plus Mullama's own fields."""
        out = [self._remote_state(r) for r in self.models.remotes.values()]
        for served in self.models.served():
            if served.state is not ModelState.LOADED:
                continue
            entry, info, digest = await self._entry(served.entry.name)
            out.append({**self._state(served), "digest": digest, "details": _details(info)})
        return out

    def _state(self, served: ServedModel) -> dict[str, Any]:
        client = served.client
        st = client.stats()
        expires = served.expires_at
        if expires is None:  # pinned or keep_alive < 0: far in the future, as Ollama does
            expires = (datetime.now(UTC) + _FOREVER).timestamp()
        return {
            "name": served.entry.name,
            "model": served.entry.name,
            "size": served.entry.size,
            "size_vram": 0,
            "memory_estimate": served.estimate,
            "expires_at": iso_time(expires),
            "pinned": served.pinned,
            "loaded": served.loaded,
            "pid": client.pid if served.loaded else None,
            "context_length": served.opts.context_size,
            "parallel": served.opts.parallel,
            "active_requests": served.leases,
            "active_sequences": st.active if served.loaded else 0,
            "queued_sequences": st.queued if served.loaded else 0,
            **adapters_card(served.opts.lora),
        }

    async def catalog(self, paths: bool = False) -> list[dict[str, Any]]:
        """Every model this daemon can serve, with its loaded state (and its file's path
        when ``paths``: for an admin, api/disclosure.py)."""
        out = [self._remote_state(r) for r in self.models.remotes.values()]
        for served in self.models.served():
            info = await asyncio.to_thread(served.entry.gguf)
            state = self._state(served)
            if not served.loaded:
                state["expires_at"] = None
            path = str(served.entry.path) if paths else None
            out.append({**state, "path": path, "details": _details(info)})
        return out

    async def show(self, name: str, paths: bool = False) -> dict[str, Any]:
        """Ollama's /api/show; its modelfile names the file's path only when ``paths``
        (for an admin), else the model."""
        target = await asyncio.to_thread(self.models.route, name)  # the name, resolved once
        remote = target.remote
        if remote is not None:
            return {
                "license": "",
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": _REMOTE_DETAILS,
                "model_info": {},
                "capabilities": ["completion", "tools", "embedding"],
                "modified_at": iso_time(self.models.started_at),
                "remote_model": remote.upstream_model,
            }
        entry, info, digest = await self._entry(target)
        model_info = {
            k: v
            for k, v in info.metadata.items()
            if not k.startswith("tokenizer.ggml.") and not isinstance(v, list)
        }
        model_info["general.parameter_count"] = info.parameter_count
        ref = entry.ref
        template = ref.template or info.chat_template or ""
        params = dict(ref.parameters)
        profile = profile_of(self.models, target)
        capabilities = ["completion", "embedding"]
        if await probe(profile.chat_template) is not None:
            capabilities.append("thinking")  # its template has a thinking format
        out = {
            "license": info.get("general.license", ""),
            "modelfile": f"FROM {entry.path if paths else entry.name}\n",
            "parameters": "\n".join(_param_lines(params)),
            "template": template,
            "details": _details(info),
            "model_info": model_info,
            "capabilities": capabilities,
            "modified_at": iso_time(entry.modified),
        }
        if ref.system:
            out["system"] = ref.system
        out["request_defaults"] = request_defaults(profile)
        return out


def request_defaults(profile: Profile) -> dict[str, Any]:
    """Mullama's extension of /api/show: the defaults a request gets for what it does not
    set, on each side (the OpenAI-shaped APIs take llama-server's sampling defaults,
    Ollama's its own), each with where it comes from."""
    base = asdict(SamplingParams())
    return {
        "openai": profile.request_defaults(base, "llama-server's default"),
        "ollama": profile.request_defaults({**base, **OLLAMA_DEFAULTS}, "Ollama's default"),
    }


def _param_lines(params: dict[str, Any]) -> list[str]:
    """Ollama's Modelfile-style parameter listing: one ``name value`` per line."""
    lines = []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<15} {orjson.dumps(v).decode() if isinstance(v, str) else v}")
    return lines
