"""Admin routes and the spellings an attacker would try to reach them by, sent byte for
byte over a socket (an HTTP client library would normalise or refuse some of them)."""

from __future__ import annotations

import random
import socket

import orjson

from tests.conftest import MODEL

# Each admin operation with a body that would do real harm if it got through.
ADMIN_OPERATIONS: list[tuple[str, str, dict]] = [
    ("POST", "/api/pull", {"model": "hf.co/attacker/Evil-GGUF", "stream": False}),
    ("DELETE", "/api/delete", {"model": "victim"}),
    ("POST", "/api/copy", {"source": MODEL, "destination": "pwned-copy"}),
    ("POST", "/api/create", {"model": "pwned-create", "from": MODEL, "stream": False}),
    ("POST", f"/api/models/{MODEL}/unload", {}),
    ("POST", f"/api/models/{MODEL}/load", {}),
    ("POST", f"/api/models/{MODEL}/pin", {}),
    ("POST", f"/api/models/{MODEL}/unpin", {}),
    ("POST", "/api/daemon/stop", {"force": True, "timeout": 0}),
]

CONTROL = ["%0A", "%0D", "%0D%0A", "%09", "%00", "%0B", "%0C", "%1B", "%7F"]
SUFFIXES = ["/", ".", "/.", "/./", ";x", ";", "%20", "%2F", "%2E", "..;/", "/..", "?x=1",
            "?/api/chat", "%3F", "%23frag", "#frag"]  # fmt: skip


def _encode_slashes(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return head + "%2F" + tail if head else path


def _encode_letter(path: str) -> str:
    i = max(i for i, c in enumerate(path) if c.isalpha())
    return path[:i] + f"%{ord(path[i]):02X}" + path[i + 1 :]


def disguises(path: str) -> list[str]:
    """Spellings of ``path`` that a router, a proxy or a policy might disagree on."""
    out = [path + c for c in CONTROL]
    out += [c + path for c in ("%0A", "%00")]
    out += [path.replace("/api/", "/api/" + c, 1) for c in ("%0A", "%09")]
    out += [path + s for s in SUFFIXES]
    out += [
        "/" + path,  # doubled leading slash
        path.replace("/api/", "/api//", 1),
        path.replace("/api/", "/api/./", 1),
        path.replace("/api/", "/ui/../api/", 1),
        path.replace("/api/", "/health/../api/", 1),
        path.replace("/api/", "/api%2F", 1),
        _encode_slashes(path),
        _encode_letter(path),
        path.upper(),
        path[:5] + path[5:].capitalize(),
        path.replace("/api/", "/API/", 1),
        path.replace("/api/", "/v1/../api/", 1),
        "/v1" + path,
    ]
    return out


def mutate(path: str, rng: random.Random) -> str:
    """One to three random disguises of ``path`` stacked (for the fuzz test)."""
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.3:
            i = rng.randint(1, len(path))
            path = path[:i] + rng.choice(CONTROL) + path[i:]
        elif choice < 0.55:
            path = path + rng.choice(SUFFIXES)
        elif choice < 0.7:
            i = path.find("/", rng.randint(0, len(path) - 1))
            if i >= 0:
                path = path[:i] + rng.choice(["//", "/./", "%2F", "/%2e/", "/x/../"]) + path[i + 1 :]
        elif choice < 0.85:
            i = rng.randrange(len(path))
            if path[i].isalpha():
                c = path[i]
                path = path[:i] + rng.choice([c.upper(), f"%{ord(c):02X}", f"%{ord(c):02x}"]) + path[i + 1 :]
        else:
            path = rng.choice(["/", "//", "/%0A"]) + path.lstrip("/")
    return path


OVERRIDES = [
    {},
    {"X-HTTP-Method-Override": "POST"},
    {"X-HTTP-Method-Override": "DELETE"},
    {"X-HTTP-Method": "POST"},
    {"X-Method-Override": "POST"},
]


def send(
    port: int, method: str, path: str, headers: dict[str, str], body: dict | None = None
) -> tuple[int, bytes]:
    """One request exactly as written; (status, whole response)."""
    payload = orjson.dumps(body) if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
    if not any(k.lower() == "host" for k in headers):
        lines.append(f"Host: 127.0.0.1:{port}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    parts = data.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), data
