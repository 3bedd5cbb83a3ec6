"""Cache scopes (security issue 31): which tenant a caller is, the opaque scope a
generation carries, and that saved states keep their scope on disk."""

from __future__ import annotations

import numpy as np
import pytest

from mullama.config import ConfigError
from mullama.engine.kvcache import HostCache, as_tokens, state_buffer
from mullama.engine.sessions import Saved, SessionStore
from mullama.errors import InvalidParameter
from mullama.requestctx import RequestContext
from mullama.security.auth import LOCAL_SOCKET, Principal
from mullama.security.keys import KeyRing, load_key_file
from mullama.security.tenancy import CacheTenancy


def _ring(tmp_path, text: str) -> KeyRing:
    f = tmp_path / "keys.yaml"
    f.write_text(text)
    return KeyRing(load_key_file(f))


def _caller(name: str) -> Principal:
    return Principal(name, admin=False, rate_key=f"key:{name}")


KEYS = (
    "- {name: alpha, key: ka}\n"
    "- {name: beta, key: kb}\n"
    "- {name: gamma, key: kc, tenant: team}\n"
    "- {name: delta, key: kd, tenant: ' team '}\n"
)


def test_each_key_is_a_tenant_unless_its_entry_names_a_shared_one(tmp_path):
    tenancy = CacheTenancy(_ring(tmp_path, KEYS), shared=False)
    alpha, beta, gamma, delta = (tenancy.tenant(_caller(n)) for n in
                                 ("alpha", "beta", "gamma", "delta"))  # fmt: skip
    assert len({alpha, beta, gamma}) == 3 and "" not in {alpha, beta, gamma}
    assert gamma == delta  # one tenant, two keys
    assert tenancy.tenant(LOCAL_SOCKET) not in {"", alpha, beta, gamma}


def test_the_flag_or_a_single_key_shares_the_caches(tmp_path):
    ring = _ring(tmp_path, KEYS)
    assert CacheTenancy(ring, shared=True).tenant(_caller("alpha")) == ""
    one = _ring(tmp_path, "- {name: solo, key: ks}\n")
    assert CacheTenancy(one, shared=False).tenant(_caller("solo")) == ""
    assert CacheTenancy(KeyRing([]), shared=False).tenant(_caller("client 1.2.3.4")) == ""


@pytest.mark.parametrize("tenant", ["''", "3", "[a]"])
def test_a_tenant_must_be_a_non_empty_string(tmp_path, tenant):
    f = tmp_path / "keys.yaml"
    f.write_text(f"- {{name: a, key: k, tenant: {tenant}}}\n")
    with pytest.raises(ConfigError, match="tenant"):
        load_key_file(f)


def test_the_scope_mixes_the_tenant_and_the_salt():
    shared, mine, theirs = RequestContext(), RequestContext(), RequestContext()
    mine.cache_tenant, theirs.cache_tenant = "key:alpha", "key:beta"
    assert shared.cache_scope() == "" and shared.cache_scope(None) == ""
    scopes = {shared.cache_scope("s1"), shared.cache_scope("s2"), mine.cache_scope(),
              mine.cache_scope("s1"), theirs.cache_scope(), theirs.cache_scope("s1")}  # fmt: skip
    assert len(scopes) == 6 and "" not in scopes
    assert mine.cache_scope("s1") == mine.cache_scope("s1")  # stable (Redis, sessions)
    assert len(mine.cache_scope()) == 24


def test_cache_salt_is_accepted_and_checked_where_vllm_takes_it():
    from mullama.api.body import validate
    from mullama.api.llamaserver import CompletionBody
    from mullama.api.openai.responses import ResponsesRequest
    from mullama.api.openai.schemas import ChatCompletionRequest, CompletionRequest

    msgs = [{"role": "user", "content": "hi"}]
    chat = validate(ChatCompletionRequest, {"model": "m", "messages": msgs, "cache_salt": "s"})
    assert chat.cache_salt == "s"
    completion = validate(CompletionRequest, {"model": "m", "prompt": "p", "cache_salt": "s"})
    assert completion.cache_salt == "s"
    responses = validate(ResponsesRequest, {"model": "m", "input": "hi", "cache_salt": "s"})
    assert responses.to_chat([{"role": "user", "content": "hi"}]).cache_salt == "s"
    body = validate(CompletionBody, {"prompt": "p", "cache_salt": "s"})
    assert body.to_completion("m").cache_salt == "s"
    for bad in ("", 5):
        with pytest.raises(InvalidParameter):
            validate(ChatCompletionRequest, {"model": "m", "messages": msgs, "cache_salt": bad})


def test_saved_sessions_keep_their_scope(tmp_path):
    store = SessionStore(tmp_path, 10**6, {"model": "x"})
    tokens = as_tokens(list(range(1, 65)))

    def state(fill: int):
        buf = state_buffer(16)
        np.frombuffer(buf, dtype=np.uint8)[:] = fill
        return buf

    kept, _ = store.write([Saved(tokens, state(1), 16), Saved(tokens, state(2), 16, scope="A")])
    assert kept == 2  # the same tokens in two scopes: two files
    host = HostCache(10**6)
    host.add_saved(SessionStore(tmp_path, 10**6, {"model": "x"}).index())
    for scope, fill in (("", 1), ("A", 2)):
        entry, n = host.best(tokens, scope)
        assert entry is not None and n == 64 and entry.scope == scope
        assert host.materialize(entry) and bytes(entry.data) == bytes([fill]) * 16
    assert host.best(tokens, "B") == (None, 0)
