"""The Responses API's reasoning items: the one an answer writes before its message (the
model's thinking as its ``reasoning_text`` content; no summary is written) and the text of
those a client sends back, which becomes the next assistant turn's ``reasoning_content``.

OpenAI's reasoning items carry an ``encrypted_content`` that some clients send back alone
(Codex sends back a reasoning item without its text content): here it holds the same
text, sealed in an opaque string this server reads back; another server's encrypted
content holds nothing readable here."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ...errors import InvalidParameter

_SEAL = "mullama.reasoning."


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """A reasoning item (``encrypted_content`` once it has text)."""
    item = {"type": "reasoning", "id": item_id, "summary": [],
            "content": [reasoning_part(text)], "status": status}  # fmt: skip
    if text:
        item["encrypted_content"] = _sealed(text)
    return item


def item_thought(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its ``reasoning_text`` content, else the text sealed in
    its ``encrypted_content``, else its summary's text ("" when it has none of them)."""
    sealed = _unsealed(item.get("encrypted_content"))
    for key, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        if key == "summary" and sealed:
            return sealed
        parts = item.get(key) or []
        if not isinstance(parts, list):
            raise InvalidParameter(f"{where}.{key} must be a list of parts", param=f"{where}.{key}")  # fmt: skip
        text = "".join(
            p["text"] for p in parts
            if isinstance(p, dict) and p.get("type") == kind and isinstance(p.get("text"), str)
        )  # fmt: skip
        if text:
            return text
    return ""


def _sealed(text: str) -> str:
    return _SEAL + base64.urlsafe_b64encode(text.encode()).decode()


def _unsealed(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(_SEAL):
        return ""
    try:
        return base64.urlsafe_b64decode(value[len(_SEAL) :]).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
