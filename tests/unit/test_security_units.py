from __future__ import annotations

import hashlib

import pytest

from mullama.config import ConfigError
from mullama.security.hosts import host_of, is_loopback_bind, is_loopback_host
from mullama.security.keys import KeyRing, load_key_file


@pytest.mark.parametrize(
    "value",
    ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8080",
     "LOCALHOST", "foo.localhost:1", "127.1.2.3"],
)  # fmt: skip
def test_loopback_hosts(value):
    assert is_loopback_host(value)


@pytest.mark.parametrize(
    "value",
    ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "127.0.0.1/health?",
     "x/?", "localhost@evil.example", "localhost:80:80", "[::1", "localhost:abc",
     "10.0.0.1", "", "localhost evil", "[fe80::1]"],
)  # fmt: skip
def test_other_hosts(value):
    assert not is_loopback_host(value)


def test_host_parsing():
    assert host_of("Example.COM:81") == "example.com"
    assert host_of("[::1]:9") == "::1"
    assert host_of("a/b") is None


def test_loopback_bind():
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("::1")
    assert is_loopback_bind("localhost")
    assert not is_loopback_bind("0.0.0.0") and not is_loopback_bind("192.0.2.1")


def test_key_file_keeps_only_hashes(tmp_path):
    f = tmp_path / "keys.json"
    digest = hashlib.sha256(b"second-key").hexdigest()
    f.write_text(
        '{"keys": [{"name": "a", "key": "first-key", "scope": "admin",'
        ' "requests_per_minute": 5},'
        f' {{"name": "b", "sha256": "{digest}", "tokens_per_minute": 100}}]}}'
    )
    keys = load_key_file(f)
    assert [k.name for k in keys] == ["a", "b"]
    assert "first-key" not in repr(keys)
    ring = KeyRing(keys)
    assert ring.lookup("first-key").scope == "admin"
    assert ring.lookup("first-key").requests_per_minute == 5
    b = ring.lookup("second-key")
    assert (b.name, b.scope, b.tokens_per_minute) == ("b", "inference", 100)
    assert ring.lookup("third") is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[]", "non-empty"),
        ("- {name: a, key: k, scope: root}", "scope"),
        ("- {name: a}", "exactly one"),
        ("- {name: a, key: k, sha256: abcd}", "exactly one"),
        ("- {name: a, sha256: abcd}", "64 hex"),
        ("- {name: a, key: k, colour: red}", "colour"),
        ("- {name: a, key: k, requests_per_minute: -1}", "requests_per_minute"),
        ("- {name: a, key: k}\n- {name: a, key: j}", "unique"),
    ],
)
def test_bad_key_files(tmp_path, text, needle):
    f = tmp_path / "keys.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        KeyRing(load_key_file(f))


def test_host_forms_of_dns_rebinding_are_refused():
    from mullama.security.hosts import is_loopback_host

    allowed = ("localhost", "LOCALHOST:8080", "localhost.", "127.0.0.1", "127.0.0.1.",
               "127.5.6.7:1", "[::1]", "[::1]:8080", "app.localhost", "app.localhost.:80")  # fmt: skip
    refused = (
        "evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "evil.example:80",
        "2130706433", "0x7f000001", "0x7f.0.0.1", "017700000001", "0177.0.0.1", "127.1",
        "[::ffff:7f00:1]x", "localhost:80@evil.example", "evil.example#.localhost",
        "evil.example/.localhost", "evil.example\\.localhost", "[fe80::1]", "0.0.0.0",
        "localhost:abc", "", " ", "[::1", "evil.example%2F.localhost",
    )  # fmt: skip
    for host in allowed:
        assert is_loopback_host(host), host
    for host in refused:
        assert not is_loopback_host(host), host


def test_api_key_comparison_does_the_same_work_whatever_matches(monkeypatch):
    """Timing tells an attacker nothing about how much of a key is right: the presented
    key is hashed first (so a shared prefix of the key is no shared prefix of what is
    compared), and its digest is compared with every stored digest by
    hmac.compare_digest, with no early exit on a match. Checked by watching the real
    compare_digest (called through), not by timing: a vote over timed batches (a key
    wrong in its last character against one wrong in its first) split 0.66 in CI and up
    to 0.85 here with this constant-time lookup, and 0.085 one run, 0.855 the next with
    a plain == on the raw key: it could not tell the two apart."""
    from mullama.security import keys as keys_module
    from mullama.security.keys import ApiKey, KeyRing, digest

    secret = "sk-" + "a1b2c3d4" * 6
    ring = KeyRing([ApiKey(f"k{i}", "admin", digest(secret if i == 0 else f"sk-other-{i}" * 3))
                    for i in range(4)])  # fmt: skip
    real = keys_module.hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def watched(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", watched)
    stored = [k.digest for k in ring.keys]
    for presented, found in ((secret, "k0"), (secret[:-1] + "x", None),
                             ("x" + secret[1:], None), ("", None)):  # fmt: skip
        calls.clear()
        key = ring.lookup(presented)
        assert (key.name if key else None) == found, presented
        # every stored key, in order, against the presented key's 32-byte digest
        assert [b for _, b in calls] == stored
        assert all(a == digest(presented) and len(a) == 32 for a, _ in calls)
