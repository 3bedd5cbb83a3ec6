#!/usr/bin/env python3
"""Record the first requests of Codex CLI and Claude Code (tests/data/agents/).

A small HTTP server on 127.0.0.1 that writes down every request it gets (method, path,
headers, JSON body; key headers redacted) and answers with the smallest valid streamed
reply of the API asked (Responses events for /v1/responses, Messages events for
/v1/messages). Each agent runs one turn against it, pointed the way docs/CLIENTS.md says:

    .venv/bin/python scripts/record-agent-requests.py codex  > codex.json
    .venv/bin/python scripts/record-agent-requests.py claude > claude.json

The agents come from .agents/ (scripts/install-agents.sh). Nothing leaves 127.0.0.1: the
agents' update checks, telemetry and analytics are off (tests/agents.py says how).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agents import AGENTS, claude_command, codex_command  # noqa: E402

SECRET_HEADERS = {"authorization", "x-api-key", "cookie", "proxy-authorization"}
TEXT = "Hi."
PROMPT = "say hi"


# RECORD_DROP_EVENTS=a,b leaves those events out of the answer: which ones a client needs.
DROP = set(filter(None, os.environ.get("RECORD_DROP_EVENTS", "").split(",")))
# RECORD_CUT=1 ends the answer as cut by the output cap (response.incomplete, max_tokens).
CUT = os.environ.get("RECORD_CUT") == "1"


def _sse(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        for name, data in events
        if name not in DROP
    )


def responses_events(body: dict) -> bytes:
    """The fewest Responses API events that make a complete turn with one message."""
    resp = {"id": "resp_1", "object": "response", "created_at": 0, "status": "in_progress",
            "model": body.get("model"), "output": []}  # fmt: skip
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}  # fmt: skip
    done = {**resp, "status": "completed", "output": [item],
            "usage": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}  # fmt: skip
    events = [
        ("response.created", {"type": "response.created", "response": resp}),
        ("response.output_item.added", {"type": "response.output_item.added",
         "output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
        ("response.output_text.delta", {"type": "response.output_text.delta",
         "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": TEXT}),
        ("response.output_item.done", {"type": "response.output_item.done",
         "output_index": 0, "item": item}),
        ("response.incomplete", {"type": "response.incomplete", "response": {**done,
         "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}})
        if CUT else ("response.completed", {"type": "response.completed", "response": done}),
    ]  # fmt: skip
    return _sse([(n, {**d, "sequence_number": i}) for i, (n, d) in enumerate(events)])


def messages_events(body: dict) -> bytes:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
           "content": [], "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": 10, "output_tokens": 1}}  # fmt: skip
    return _sse([
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": TEXT}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens" if CUT else "end_turn",
         "stop_sequence": None}, "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ])  # fmt: skip


def message_json(body: dict) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 2}}  # fmt: skip


class Recorder(BaseHTTPRequestHandler):
    records: list[dict] = []
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def _record(self) -> dict:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): ("<redacted>" if k.lower() in SECRET_HEADERS else v)
                   for k, v in self.headers.items()}  # fmt: skip
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"undecoded_bytes": len(raw)}
        for varying in ("host", "content-length"):  # the recorder's port, the body's size
            headers.pop(varying, None)
        rec = {"method": self.command, "path": self.path, "headers": headers, "body": body}
        with self.lock:
            self.records.append(rec)
        return rec

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        rec = self._record()
        if rec["path"].split("?")[0].endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [], "models": []}).encode(),
                       "application/json")  # fmt: skip
        else:
            self._send(404, b'{"error": "not recorded"}', "application/json")

    def do_POST(self) -> None:
        rec = self._record()
        path, body = rec["path"].split("?")[0], rec["body"] or {}
        if path.endswith("/responses"):
            self._send(200, responses_events(body), "text/event-stream")
        elif path.endswith("/messages/count_tokens"):
            self._send(200, b'{"input_tokens": 10}', "application/json")
        elif path.endswith("/messages"):
            if body.get("stream"):
                self._send(200, messages_events(body), "text/event-stream")
            else:
                self._send(200, json.dumps(message_json(body)).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not recorded"}', "application/json")


def _version(package: str) -> str:
    return json.loads((AGENTS / "node_modules" / package / "package.json").read_text())["version"]


def main() -> int:
    agent, model = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="agent-home-") as tmp:
        home = Path(tmp)
        make = codex_command if agent == "codex" else claude_command
        cmd, env = make(url, home, PROMPT, model=model)
        proc = subprocess.run(cmd, env=env, cwd=home, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        config = home / ".codex" / "config.toml"
        setup = {"argv": [Path(cmd[0]).name, *cmd[1:]],
                 "env": {k: v for k, v in env.items() if k not in ("PATH", "HOME")},
                 "codex_config_toml": config.read_text() if config.exists() else None}  # fmt: skip
    server.shutdown()
    package = "@openai/codex" if agent == "codex" else "@anthropic-ai/claude-code"
    out = {
        "client": f"{package}@{_version(package)}",
        "recorded_with": " ".join(["scripts/record-agent-requests.py", *sys.argv[1:]]),
        "server_url": "http://127.0.0.1:PORT (the recorder; PORT varies)",
        "setup": setup,
        "requests": Recorder.records,
        "client_run": {"returncode": proc.returncode, "stdout": proc.stdout,
                       "stderr": proc.stderr},
    }  # fmt: skip
    text = json.dumps(out, indent=1, ensure_ascii=False)
    sys.stdout.write(text.replace(url, "http://127.0.0.1:PORT") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
