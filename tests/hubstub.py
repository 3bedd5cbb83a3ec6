"""A stand-in for the Hugging Face Hub on 127.0.0.1: the resolve endpoint (HEAD/GET with
ETag = sha256, X-Repo-Commit, Content-Length, Range) and the tree listing, with fault
injection (cut connections, wrong checksums) and a log of every request."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    path: Path
    sha256: str
    size: int


@dataclass
class Faults:
    cut_gets: int = 0  # cut this many GETs of a file after cut_bytes bytes
    cut_bytes: int = 1 << 20
    wrong_sha: bool = False  # report a sha256 that does not match the bytes
    delay: float = 0.0  # seconds to sleep before sending a file (to overlap pulls)


@dataclass
class Hub:
    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cdn_url: str | None = None  # redirect file GETs/HEADs there (another origin)

    def add(self, repo: str, filename: str, path: Path) -> HubFile:
        f = HubFile(path, sha256_of(path), path.stat().st_size)
        self.repos.setdefault(repo, {})[filename] = f
        return f

    def gets(self, filename: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["method"] == "GET"
            and "/resolve/" in r["path"]
            and (filename is None or r["path"].endswith("/" + filename))
        ]


_SHA_CACHE: dict[tuple[str, int, float], str] = {}


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")


def make_handler(hub: Hub, is_cdn: bool = False):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _record(self) -> None:
            with hub.lock:
                hub.requests.append(
                    {
                        "method": self.command,
                        "path": unquote(urlsplit(self.path).path),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "cdn": is_cdn,
                    }
                )

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def _send_json(self, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _not_found(self) -> None:
            body = b'{"error":"Entry not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            self._record()
            path = unquote(urlsplit(self.path).path)
            m = _TREE.match(path)
            if m and not head:
                files = hub.repos.get(m["repo"])
                if files is None:
                    return self._not_found()
                return self._send_json(
                    [
                        {
                            "type": "file",
                            "path": name,
                            "size": f.size,
                            "oid": f.sha256[:40],
                            "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
                        }
                        for name, f in sorted(files.items())
                    ]
                )
            m = _RESOLVE.match(path)
            if not m:
                return self._not_found()
            f = hub.repos.get(m["repo"], {}).get(m["file"])
            if f is None:
                return self._not_found()
            if hub.cdn_url and not is_cdn:
                self.send_response(302)
                self.send_header("Location", hub.cdn_url + path)
                self.send_header("X-Linked-Etag", f'"{self._etag(f)}"')
                self.send_header("X-Linked-Size", str(f.size))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_file(f, head)

        def _etag(self, f: HubFile) -> str:
            return ("0" * 64) if hub.faults.wrong_sha else f.sha256

        def _send_file(self, f: HubFile, head: bool) -> None:
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= f.size and f.size:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if rng else 200)
            self.send_header("ETag", f'"{self._etag(f)}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(f.size - start))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{f.size - 1}/{f.size}")
            self.end_headers()
            if head:
                return
            cut = None
            with hub.lock:
                if hub.faults.cut_gets > 0:
                    hub.faults.cut_gets -= 1
                    cut = hub.faults.cut_bytes
            if hub.faults.delay:
                import time

                time.sleep(hub.faults.delay)
            sent = 0
            with f.path.open("rb") as src:
                src.seek(start)
                while chunk := src.read(256 * 1024):
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(chunk)

    return Handler


class HubServer:
    def __init__(self, hub: Hub | None = None, with_cdn: bool = False) -> None:
        self.hub = hub or Hub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.hub))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.cdn = None
        if with_cdn:
            self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.hub, True))
            self.cdn.daemon_threads = True
            self.hub.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        for srv in filter(None, (self.server, self.cdn)):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        for srv in filter(None, (self.server, self.cdn)):
            srv.shutdown()
            srv.server_close()


# ---- a tiny structurally valid GGUF (for store tests that never load the model) -------


def tiny_gguf(path: Path, n_floats: int = 1024, arch: str = "llama") -> Path:
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [
        (s("general.architecture") + struct.pack("<I", 8) + s(arch)),
        (s("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 0)),
        (s("general.license") + struct.pack("<I", 8) + s("apache-2.0")),
        (s(f"{arch}.context_length") + struct.pack("<I", 4) + struct.pack("<I", 2048)),
    ]
    header = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 1) + struct.pack("<Q", len(kv))
    tensor = s("token_embd.weight") + struct.pack("<I", 1) + struct.pack("<Q", n_floats)
    tensor += struct.pack("<I", 0) + struct.pack("<Q", 0)
    head = header + b"".join(kv) + tensor
    pad = (-len(head)) % 32
    data = bytes(range(256)) * (n_floats * 4 // 256 + 1)
    path.write_bytes(head + b"\0" * pad + data[: n_floats * 4])
    return path
