"""Whose caches a request may use: the tenant of the key that sent it.

A prompt's KV reuse is reported back (``cached_tokens``, ``cache_read_input_tokens``,
llama-server's ``tokens_cached``, and the time to the first token), and a response-cache
hit says that someone sent that exact request before: shared between callers, both let
one caller probe, token by token, what another sent. So with more than one API key each
key is a tenant of its own, or of the ``tenant`` its key-file entry names (several keys,
one tenant): prefix reuse and the response cache stay within a tenant. The daemon's own
local socket is a tenant of its own. ``--share-cache-across-keys`` shares them again, and
with no key or one key nothing is scoped (one caller, or callers that trust each other).
"""

from __future__ import annotations

from .auth import Principal
from .keys import KeyRing


class CacheTenancy:
    def __init__(self, keys: KeyRing, shared: bool) -> None:
        self.keys = keys  # the ring the auth middleware holds (SIGHUP reloads it in place)
        self.shared = shared

    def tenant(self, principal: Principal | None) -> str:
        """The caller's tenant as a cache namespace; "" when caches are shared."""
        if self.shared or len(self.keys.keys) < 2 or principal is None:
            return ""
        key = self.keys.named(principal.name)
        if key is None:  # not a key's caller: the local socket
            return f"caller:{principal.name}"
        return f"tenant:{key.tenant}" if key.tenant else f"key:{key.name}"
