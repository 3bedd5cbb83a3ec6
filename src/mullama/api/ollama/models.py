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
        out = []
        for client in self.models.clients():
            if not client.alive:
                continue
            entry, info, digest = await self._entry(client.name)
            st = client.stats()
            out.append(
                {
                    "name": client.name,
                    "model": client.name,
                    "size": entry.size,
                    "digest": digest,
                    "details": _details(info),
                    "expires_at": _iso((datetime.now(UTC) + timedelta(days=3650)).timestamp()),
                    "size_vram": 0,
                    "context_length": client.spec.context_size,
                    "parallel": client.spec.parallel,
                    "active_sequences": st.active,
                    "queued_sequences": st.queued,
                }
            )
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
