"""What a requested model name means, worked out once per request: a ``Target``.

A name may be an alias (--model-alias), a model on a remote engine (--remote), a local
model that is served or that the store holds (loaded on demand), and it may have a
fallback (--fallback). ``Router.route`` follows all of that once; the manager's calls
take the ``Target`` (or a name, routed at their start), so nothing resolves a name twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ClientError, ModelNotFound
from .aliases import close_matches
from .entry import ModelEntry
from .registry import ModelRef, resolve
from .remote import RemoteModel
from .residency import ServedModel


@dataclass(frozen=True, eq=False)
class Target:
    """A requested name, resolved: the model that serves it and how."""

    asked: str | None  # the name the request gave (maybe an alias)
    name: str  # the model's own name
    remote: RemoteModel | None = None  # set: a model on a remote engine
    entry: ModelEntry | None = None  # set: a local model (served, or in the store)
    fallback: str | None = None  # the model that answers when this one cannot

    def refuse_remote(self, what: str) -> None:
        """Refuse, by name, what a remote engine does not offer through Mullama."""
        if self.remote is not None:
            raise ClientError(
                f"model {self.name!r} is served by a remote engine: {what} is not available for it",
                param="model",
            )


class Router:
    """Routes names to targets over the daemon's aliases, remotes, fallbacks, the served
    local models (``served``) and the model store (``cache_dir``)."""

    def __init__(
        self,
        aliases: Mapping[str, str],
        fallbacks: Mapping[str, str],
        remotes: Mapping[str, RemoteModel],
        served: Mapping[str, ServedModel],
        cache_dir: str,
    ) -> None:
        self.aliases = aliases
        self.fallbacks = fallbacks
        self.remotes = remotes
        self.served = served
        self.cache_dir = cache_dir

    def canonical(self, name: str | None) -> str | None:
        """``name`` with an alias followed (a lookup in a table; nothing is checked)."""
        return self.aliases.get(name or "", name)

    def route(self, name: str | None) -> Target:
        """The target ``name`` means. Raises ClientError for no name, ModelNotFound for a
        name that is no model (looking a model up changes nothing)."""
        own = self.canonical(name) or ""
        fallback = self.fallbacks.get(own)
        remote = self.remotes.get(own)
        if remote is not None:
            return Target(name, remote.name, remote=remote, fallback=fallback)
        served = self.served.get(own)
        entry = served.entry if served is not None else ModelEntry(self._resolve(own))
        return Target(name, entry.name, entry=entry, fallback=fallback)

    def _resolve(self, name: str) -> ModelRef:
        """What a name not served yet would serve; any model in the store can be loaded
        on demand, file paths only from --model."""
        if not name:
            raise ClientError("you must provide a model parameter", param="model")
        if name.endswith(".gguf") or name.startswith(("/", ".", "~")) or "=" in name:
            raise self.not_found(name)
        try:
            return resolve(name, cache_dir=self.cache_dir, paths=False)
        except ModelNotFound:
            raise self.not_found(name) from None

    def not_found(self, name: str) -> ModelNotFound:
        hint = close_matches(name, [*self.served, *self.remotes], cutoff=0.6)
        return ModelNotFound(f"The model '{name}' does not exist{hint}", param="model")
