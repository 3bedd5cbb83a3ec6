"""Model listings in Ollama's shapes: /api/tags, /api/ps, /api/show."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from ...models.gguf import GGUFInfo, human_params


def _details(info: GGUFInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": human_params(info.parameter_count),
        "quantization_level": info.quantization,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class OllamaModels:
    def __init__(self, models: Any) -> None:
        self.models = models

    async def _entry(self, name: str) -> tuple[Any, GGUFInfo, str]:
        entry = self.models.entry(name)
        info = await asyncio.to_thread(entry.gguf)
        digest = await asyncio.to_thread(entry.digest)
        return entry, info, digest

    async def tags(self) -> list[dict[str, Any]]:
        out = []
        for name in self.models.names:
            entry, info, digest = await self._entry(name)
            out.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": _iso(entry.modified),
                    "size": entry.size,
                    "digest": digest,
                    "details": _details(info),
                }
            )
        return out

    async def ps(self) -> list[dict[str, Any]]:
        """Loaded models, in Ollama's shape plus Mullama's own fields."""
        out = []
        for slot in self.models.slots():
            if not slot.loaded:
                continue
            entry, info, digest = await self._entry(slot.entry.name)
            out.append({**self._state(slot), "digest": digest, "details": _details(info)})
        return out

    def _state(self, slot: Any) -> dict[str, Any]:
        client = slot.client
        st = client.stats()
        expires = slot.expires_at
        if expires is None:  # pinned or keep_alive < 0: far in the future, as Ollama does
            expires = (datetime.now(UTC) + timedelta(days=365 * 100)).timestamp()
        return {
            "name": slot.entry.name,
            "model": slot.entry.name,
            "size": slot.entry.size,
            "size_vram": 0,
            "memory_estimate": slot.estimate,
            "expires_at": _iso(expires),
            "pinned": slot.pinned,
            "loaded": slot.loaded,
            "pid": client.pid if slot.loaded else None,
            "context_length": slot.opts.context_size,
            "parallel": slot.opts.parallel,
            "active_requests": slot.leases,
            "active_sequences": st.active if slot.loaded else 0,
            "queued_sequences": st.queued if slot.loaded else 0,
        }

    async def catalog(self) -> list[dict[str, Any]]:
        """Every model this daemon can serve, with its loaded state."""
        out = []
        for slot in self.models.slots():
            info = await asyncio.to_thread(slot.entry.gguf)
            state = self._state(slot)
            if not slot.loaded:
                state["expires_at"] = None
            out.append({**state, "path": str(slot.entry.path), "details": _details(info)})
        return out

    async def show(self, name: str) -> dict[str, Any]:
        entry, info, digest = await self._entry(name)
        model_info = {
            k: v
            for k, v in info.metadata.items()
            if not k.startswith("tokenizer.ggml.") and not isinstance(v, list)
        }
        model_info["general.parameter_count"] = info.parameter_count
        template = info.chat_template or ""
        return {
            "license": info.get("general.license", ""),
            "modelfile": f"FROM {entry.path}\n",
            "parameters": "",
            "template": template,
            "details": _details(info),
            "model_info": model_info,
            "capabilities": ["completion", "embedding"],
            "modified_at": _iso(entry.modified),
        }
