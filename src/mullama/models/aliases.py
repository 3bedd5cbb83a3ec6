"""Model names: validation, the built-in alias table, and parsing what a user typed.

Accepted forms:

- ``llama3.2:1b``             an alias (Hugging Face repo + default quantization Q4_K_M)
- ``llama3.2:1b-q8_0``        an alias with another quantization (``NAME:TAG-QUANT``)
- ``hf.co/OWNER/REPO[:QUANT]`` any GGUF repo on the Hub (default quantization Q4_K_M)
- ``hf:OWNER/REPO/FILE.gguf`` one file of a Hub repo
- ``path/to/model.gguf``      a local file (CLI only; never from the network)
- any other valid name        a model in the store (pulled, created or copied)

Every name is checked by :func:`check_name` before it reaches the file system.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidName, ModelNotFound

DEFAULT_QUANT = "Q4_K_M"
EMBEDDED_NAME = "smollm2:135m"

# name -> (Hugging Face repo, default quantization)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2:135m": ("bartowski/SmolLM2-135M-Instruct-GGUF", DEFAULT_QUANT),
    "llama3.2:1b": ("bartowski/Llama-3.2-1B-Instruct-GGUF", DEFAULT_QUANT),
    "llama3.2:3b": ("bartowski/Llama-3.2-3B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5:0.5b": ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5:1.5b": ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5:7b": ("Qwen/Qwen2.5-7B-Instruct-GGUF", DEFAULT_QUANT),
    "mistral:7b": ("bartowski/Mistral-7B-Instruct-v0.3-GGUF", DEFAULT_QUANT),
    "gemma2:2b": ("bartowski/gemma-2-2b-it-GGUF", DEFAULT_QUANT),
    "phi3.5:3.8b": ("bartowski/Phi-3.5-mini-instruct-GGUF", DEFAULT_QUANT),
    "nomic-embed": ("nomic-ai/nomic-embed-text-v1.5-GGUF", DEFAULT_QUANT),
}

MAX_NAME = 200
_NAME_CHARS = re.compile(r"[A-Za-z0-9._:/+\-]+")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*/[A-Za-z0-9][A-Za-z0-9._\-]*")
_QUANT = re.compile(r"[A-Za-z0-9_]+")


def _check_common(text: str, what: str) -> None:
    """The rules shared by names and Hub filenames."""
    if not text:
        raise InvalidName(f"empty {what}")
    if len(text) > MAX_NAME:
        raise InvalidName(f"{what} is longer than {MAX_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidName(f"{what} {text!r} contains a control character")
    if "\\" in text:
        raise InvalidName(f"{what} {text!r} contains a backslash")
    if "%" in text:
        raise InvalidName(f"{what} {text!r} contains '%' (percent-encoding is not allowed)")
    if text.startswith("/") or re.match(r"[A-Za-z]:[/\\]", text):
        raise InvalidName(f"{what} {text!r} is an absolute path")
    if ".." in text:
        raise InvalidName(f"{what} {text!r} contains '..'")


def check_name(name: str) -> str:
    """A model name as stored: letters, digits and ``._:/+-``, no ``..``, not absolute."""
    _check_common(name, "model name")
    if not _NAME_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_CHARS.fullmatch(c)})
        raise InvalidName(f"model name {name!r} contains invalid characters: {''.join(bad)!r}")
    if name.startswith((".", "-", ":")) or name.endswith(("/", ":")) or "//" in name:
        raise InvalidName(f"model name {name!r} is malformed")
    return name


def check_hub_filename(filename: str) -> str:
    """A file path inside a Hub repo, as it will be requested and named locally."""
    _check_common(filename, "Hub filename")
    if any(part in ("", ".") for part in filename.split("/")):
        raise InvalidName(f"Hub filename {filename!r} is malformed")
    return filename


@dataclass(frozen=True)
class HubSource:
    """Where to pull a model from: a repo plus either a quantization or one file."""

    repo: str
    quant: str | None = None
    filename: str | None = None
    revision: str = "main"


def is_local_path(spec: str) -> bool:
    return spec.endswith(".gguf") and not spec.startswith(("hf:", "hf.co/"))


def hub_source(name: str) -> HubSource | None:
    """The Hub location of a pullable name, or None if the name is not one."""
    check_name(name)
    if name.startswith("hf:"):
        rest = name[3:]
        parts = rest.split("/", 2)
        if len(parts) != 3 or not parts[2].endswith(".gguf"):
            raise InvalidName(f"{name!r}: expected hf:OWNER/REPO/FILE.gguf")
        repo = f"{parts[0]}/{parts[1]}"
        if not _REPO.fullmatch(repo):
            raise InvalidName(f"{name!r}: {repo!r} is not a Hub repo id")
        return HubSource(repo, filename=check_hub_filename(parts[2]))
    if name.startswith("hf.co/"):
        repo, _, quant = name[len("hf.co/") :].partition(":")
        if not _REPO.fullmatch(repo):
            raise InvalidName(f"{name!r}: expected hf.co/OWNER/REPO[:QUANT]")
        if quant and not _QUANT.fullmatch(quant):
            raise InvalidName(f"{name!r}: {quant!r} is not a quantization name")
        return HubSource(repo, quant=(quant or DEFAULT_QUANT).upper())
    if name in ALIASES:
        repo, quant = ALIASES[name]
        return HubSource(repo, quant=quant)
    for alias, (repo, _) in ALIASES.items():
        if name.startswith(alias + "-"):
            quant = name[len(alias) + 1 :]
            if _QUANT.fullmatch(quant):
                return HubSource(repo, quant=quant.upper())
    return None


def close_matches(name: str, candidates: Iterable[str], cutoff: float = 0.5) -> str:
    """``; did you mean a, b?`` or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown_model(name: str, stored: list[str]) -> ModelNotFound:
    known = sorted(set(ALIASES) | set(stored))
    return ModelNotFound(
        f"unknown model {name!r}{close_matches(name, known)} "
        f"(known names: {', '.join(sorted(ALIASES))}; or hf.co/OWNER/REPO[:QUANT], "
        "hf:OWNER/REPO/FILE.gguf, a path to a .gguf file)",
        param="model",
    )
