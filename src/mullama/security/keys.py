"""API keys: loaded from MULLAMA_API_KEY and --api-key-file, kept only as sha256 digests."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, Settings
from ..files import warn_if_readable_by_others

Scope = Literal["inference", "admin"]
SCOPES: tuple[str, ...] = ("inference", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: Scope
    digest: bytes  # sha256 of the key; the key itself is never stored
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # Keys of one tenant share its prompt (KV) and response caches; a key without one
    # is a tenant of its own.
    tenant: str | None = None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        names = [k.name for k in keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"API key names must be unique; repeated: {', '.join(dupes)}")
        self.keys = keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    def named(self, name: str) -> ApiKey | None:
        """The key called ``name`` (a principal's name), None when no key is."""
        return next((k for k in self.keys if k.name == name), None)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key whose digest matches, compared in constant time against every key."""
        d = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(d, key.digest):
                found = key
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys: list[ApiKey] = []
        if settings.api_key is not None and settings.api_key.get_secret_value():
            keys.append(ApiKey("default", "admin", digest(settings.api_key.get_secret_value())))
        if settings.api_key_file is not None:
            keys.extend(load_key_file(settings.api_key_file))
        return cls(keys)


def load_key_file(path: Path) -> list[ApiKey]:
    """YAML or JSON: a list of entries, or ``{"keys": [...]}``. Each entry has ``name``,
    ``key`` (the key) or ``sha256`` (its hex digest), ``scope`` and optional
    ``requests_per_minute`` / ``tokens_per_minute`` and ``tenant`` (keys of one tenant
    share its caches). Or llama-server's format: one key per line (``#`` comments
    allowed), each with the inference scope."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read API key file {path}: {exc.strerror}") from exc
    warn_if_readable_by_others(path, "API key file")  # as ssh does for a private key
    plain = [line.strip() for line in text.splitlines()]
    plain = [line for line in plain if line and not line.startswith("#")]
    if plain and all(" " not in k and ":" not in k and k[0] not in "-[{" for k in plain):
        return [ApiKey(f"key-{i}", "inference", digest(k)) for i, k in enumerate(plain)]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"API key file {path} is not valid YAML/JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("keys")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"API key file {path}: expected a non-empty list of keys")
    return [_entry(path, i, e) for i, e in enumerate(data)]


_ENTRY_KEYS = {
    "name", "key", "sha256", "scope", "requests_per_minute", "tokens_per_minute", "tenant",
}  # fmt: skip


def _entry(path: Path, i: int, e: Any) -> ApiKey:
    where = f"API key file {path}, entry {i}"
    if not isinstance(e, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(e) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    name = str(e.get("name") or f"key-{i}")
    scope = e.get("scope", "inference")
    if scope not in SCOPES:
        raise ConfigError(f"{where} ({name}): scope must be inference or admin, not {scope!r}")
    if ("key" in e) == ("sha256" in e):
        raise ConfigError(f"{where} ({name}): give exactly one of 'key' or 'sha256'")
    if "key" in e:
        if not str(e["key"]):
            raise ConfigError(f"{where} ({name}): empty key")
        d = digest(str(e["key"]))
    else:
        try:
            d = bytes.fromhex(str(e["sha256"]))
        except ValueError:
            d = b""
        if len(d) != 32:
            raise ConfigError(f"{where} ({name}): sha256 must be 64 hex digits")
    limits = {}
    for field in ("requests_per_minute", "tokens_per_minute"):
        value = e.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{where} ({name}): {field} must be a non-negative integer")
        limits[field] = value
    tenant = e.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        raise ConfigError(f"{where} ({name}): tenant must be a non-empty string")
    return ApiKey(name, scope, d, **limits, tenant=tenant.strip() if tenant else None)
