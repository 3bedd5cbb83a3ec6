#!/usr/bin/env python3
"""Render deploy/nginx/mullama.conf and deploy/haproxy/haproxy.cfg for a given set of
instances, ports and certificate: the real files with only their addresses, ports and
paths replaced. Used by deploy/local-cluster.sh and by the tests (standard library only).

    python3 deploy/render.py nginx --workdir DIR --backend 127.0.0.1:8081 ... \
        --http-port 8080 --https-port 8443 --cert C --key K
    python3 deploy/render.py haproxy --workdir DIR --backend ... [--embed-backend ...] \
        --http-port 8080 --https-port 8443 --cert C --key K

Each prints the path of the main config file it wrote into DIR.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
NGINX_SITE = DEPLOY / "nginx" / "mullama.conf"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"

_NGINX_SERVER = re.compile(r"^(\s*)server\s+\S+:\d+(.*;)\s*$")
_HAPROXY_SERVER = re.compile(r"^(\s*)server\s+(\S+)\s+\S+:\d+(.*)$")


def _replace_block_servers(lines: list[str], in_block, pattern, make) -> list[str]:
    """Replace the server lines of the blocks where ``in_block(header)`` is true by
    ``make(indent, rest, header)`` (which returns the new lines), at the first one's place."""
    out: list[str] = []
    header = ""
    done: set[str] = set()
    for line in lines:
        stripped = line.strip()
        if re.match(r"^(upstream|backend|frontend|defaults|global|listen|server)\b", line):
            header = stripped
        m = pattern.match(line)
        if m and in_block(header):
            if header not in done:
                done.add(header)
                out.extend(make(m.group(1), m.groups()[-1], header))
            continue
        out.append(line)
    return out


def render_nginx_site(
    backends: list[str],
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
    logdir: Path,
    addr: str = "127.0.0.1",
) -> str:
    lines = NGINX_SITE.read_text().splitlines()
    lines = _replace_block_servers(
        lines,
        lambda h: h.startswith("upstream mullama"),
        _NGINX_SERVER,
        lambda indent, rest, _h: [f"{indent}server {b}{rest}" for b in backends],
    )
    text = "\n".join(lines) + "\n"
    text = re.sub(r"^\s*listen \[::\]:\d+.*\n", "", text, flags=re.M)
    text = re.sub(r"listen 80;", f"listen {addr}:{http_port};", text)
    text = re.sub(r"listen 443 ", f"listen {addr}:{https_port} ", text)
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)
    text = re.sub(r"access_log\s+\S+;", f"access_log {logdir / 'mullama.access.log'};", text)
    return text


def nginx_main(site: Path, workdir: Path) -> str:
    """A minimal nginx.conf that runs unprivileged from ``workdir`` and includes the site."""
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    return f"""worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {site};
}}
"""


def render_haproxy(
    backends: list[str],
    embed_backends: list[str],
    http_port: int,
    https_port: int,
    pem: Path,
    addr: str = "127.0.0.1",
) -> str:
    def make(indent: str, rest: str, header: str) -> list[str]:
        pool = embed_backends if header.endswith("_embeddings") else backends
        prefix = "e" if header.endswith("_embeddings") else "m"
        return [f"{indent}server {prefix}{i} {b}{rest}" for i, b in enumerate(pool, 1)]

    lines = HAPROXY_CFG.read_text().splitlines()
    lines = _replace_block_servers(lines, lambda h: h.startswith("backend "), _HAPROXY_SERVER, make)
    text = "\n".join(lines) + "\n"
    text = re.sub(r"bind :80\b", f"bind {addr}:{http_port}", text)
    text = re.sub(r"bind :443 ssl crt \S+", f"bind {addr}:{https_port} ssl crt {pem}", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("proxy", choices=["nginx", "haproxy"])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--backend", action="append", required=True)
    ap.add_argument("--embed-backend", action="append", default=[])
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--https-port", type=int, required=True)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.proxy == "nginx":
        site = workdir / "mullama.conf"
        site.write_text(
            render_nginx_site(
                args.backend, args.http_port, args.https_port,
                args.cert.resolve(), args.key.resolve(), workdir,
            )
        )  # fmt: skip
        main_conf = workdir / "nginx.conf"
        main_conf.write_text(nginx_main(site, workdir))
    else:
        pem = workdir / "mullama.pem"
        pem.write_text(args.cert.read_text() + args.key.read_text())
        pem.chmod(0o600)
        main_conf = workdir / "haproxy.cfg"
        main_conf.write_text(
            render_haproxy(
                args.backend, args.embed_backend or args.backend,
                args.http_port, args.https_port, pem,
            )
        )  # fmt: skip
    print(main_conf)


if __name__ == "__main__":
    main()
