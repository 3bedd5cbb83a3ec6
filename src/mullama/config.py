"""One settings schema for flags, environment variables (MULLAMA_*), a config file and
defaults.

Each field becomes a ``--kebab-case`` flag of ``mullama serve`` (except env-only secrets)
and an ``MULLAMA_UPPER`` environment variable, and a key of the config file
(``--config FILE``, YAML or TOML) under its section (``server``, ``security`` or
``models``). Precedence: flags > environment > config file > defaults. A secret field can
also be read from a file named by ``MULLAMA_<NAME>__FILE`` (Docker/Kubernetes secrets).
``docs/CONFIG.md`` is generated from this schema (``mullama config docs``).
"""

from __future__ import annotations

import argparse
import contextvars
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .config_sections import ModelSettings, SecuritySettings, ServerSettings
from .files import warn_if_readable_by_others

ENV_PREFIX = "MULLAMA_"
SECRET_FILE_SUFFIX = "__FILE"

# Never shown by ``config show``; readable from MULLAMA_<NAME>__FILE.
SECRET_FIELDS = frozenset({"api_key", "rate_limit_storage", "cache_url"})
# No command-line flag (a flag would show the secret in ``ps``).
ENV_ONLY_FIELDS = frozenset({"api_key"})
# Not allowed inside the config file itself.
NOT_IN_FILE = frozenset({"config"})


class ConfigError(ValueError):
    """The configuration file is unreadable or has keys the schema does not know."""


_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "mullama_config_file_values", default=None
)


# A config-file section per class; a field belongs to the class that declares it, so a new
# field cannot land in a section by accident.
SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSettings,
    "models": ModelSettings,
    "security": SecuritySettings,
}


class Settings(SecuritySettings, ModelSettings, ServerSettings, BaseSettings):
    """Every setting, flat (settings.http_port): flags, env and the file all name fields
    directly; the sections above only group them. Fields are listed server, models,
    security (pydantic collects bases from the last)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @field_validator(
        "model", "model_opt", "model_alias", "fallback", "cors_origins", "allowed_hosts",
        "remote_opt", "lora",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("remote", mode="before")
    @classmethod
    def _split_remotes(cls, value: Any) -> Any:
        if isinstance(value, str):  # commas separate a model's replicas
            return [v.strip() for v in value.split(";") if v.strip()]
        return value

    @field_validator("cache_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _SecretFileSource(settings_cls),
            _ConfigFileSource(settings_cls),
        )


class _SecretFileSource(PydanticBaseSettingsSource):
    """MULLAMA_<NAME>__FILE=/run/secrets/x: the secret field's value is the file's content."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SECRET_FIELDS:
            var = env_name(name) + SECRET_FILE_SUFFIX
            path = os.environ.get(var)
            if path:
                try:
                    out[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"{var}: cannot read {path}: {exc.strerror}") from exc
                warn_if_readable_by_others(Path(path), f"{var} secret file")
        return out


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from --config FILE, already flattened and checked by read_config_file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


def section_of(field: str) -> str:
    """The config-file section of a field: the section class that declares it."""
    for section, cls in SECTIONS.items():
        if field in cls.model_fields:
            return section
    raise KeyError(field)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _parse_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings, flattened to field names. Unknown sections or keys are errors
    that name the key and the file; relative paths are taken from the file's folder."""
    data = _parse_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected sections {', '.join(SECTIONS)}")
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown key {section!r} in config file {path} "
                f"(sections are: {', '.join(SECTIONS)})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping")
        for key, value in body.items():
            name = str(key).replace("-", "_")
            if name not in fields or name in NOT_IN_FILE:
                raise ConfigError(f"unknown key '{section}.{key}' in config file {path}")
            if section_of(name) != section:
                raise ConfigError(
                    f"key '{section}.{key}' in config file {path} belongs in section "
                    f"'{section_of(name)}'"
                )
            if _is_path(name) and isinstance(value, str) and value:
                value = str((path.parent / value).expanduser())
            out[name] = value
    return out


def _is_path(name: str) -> bool:
    return Path in get_args(Settings.model_fields[name].annotation)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per settings field; unset flags stay absent (argparse.SUPPRESS)."""
    for name, info in Settings.model_fields.items():
        if name in ENV_ONLY_FIELDS:
            continue
        ann = info.annotation
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": f"{info.description} [env {env_name(name)}]",
        }
        if get_origin(ann) is list:
            kwargs["action"] = "append"
        elif get_origin(ann) is Literal:
            kwargs["choices"] = list(get_args(ann))
        elif ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif ann in (int, float):
            kwargs["type"] = ann
        parser.add_argument(flag_name(name), **kwargs)


def load_settings(cli_values: dict[str, Any] | None = None) -> Settings:
    """Flags (already parsed) override the environment, which overrides the config file
    (``--config`` or MULLAMA_CONFIG), which overrides defaults."""
    values = dict(cli_values or {})
    path = values.get("config") or os.environ.get(env_name("config"))
    file_values = read_config_file(Path(path)) if path else {}
    token = _FILE_VALUES.set(file_values)
    try:
        return Settings(**values)
    finally:
        _FILE_VALUES.reset(token)


def _redact(name: str, value: Any) -> Any:
    if value is None or name not in SECRET_FIELDS:
        return value
    if name in ("rate_limit_storage", "cache_url"):
        parts = urlsplit(str(value))
        if parts.password is None:
            return value
        netloc = parts.netloc.replace(":" + parts.password + "@", ":<redacted>@")
        return urlunsplit(parts._replace(netloc=netloc))
    return "<redacted>"


def effective_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The configuration in config-file shape, secrets redacted (``mullama config show``)."""
    dumped = settings.model_dump(mode="json")
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name in Settings.model_fields:
        if name in NOT_IN_FILE:
            continue
        out[section_of(name)][name] = _redact(name, dumped[name])
    return out


def settings_markdown() -> str:
    """The reference table of every flag and environment variable."""
    lines = [
        "| flag | environment | config file | default | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        flag = "(none)" if name in ENV_ONLY_FIELDS else f"`{flag_name(name)}`"
        env = f"`{env_name(name)}`"
        if name in SECRET_FIELDS:
            env += f", `{env_name(name)}{SECRET_FILE_SUFFIX}`"
        where = "(none)" if name in NOT_IN_FILE else f"`{section_of(name)}.{name}`"
        lines.append(f"| {flag} | {env} | {where} | `{default!r}` | {info.description} |")
    return "\n".join(lines) + "\n"
