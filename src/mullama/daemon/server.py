"""Running the app under uvicorn: TCP (optionally TLS) plus the control socket, with our
own signal handling (see shutdown.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..config import ConfigError, Settings
from ..errors import MullamaError
from ..logsetup import reopen_log_files, setup_logging
from ..models.manager import ModelManager
from ..security.hosts import is_loopback_bind
from ..security.keys import KeyRing
from ..security.tls import check_tls
from .app import create_app
from .control import ControlSocket, ControlSocketError, LocalSocketApp, socket_path
from .http_protocol import limited_protocol
from .shutdown import Shutdown

log = logging.getLogger(__name__)

# uvicorn's own wait for connections, after our drain has already finished them.
UVICORN_GRACE = 5


class _Server(uvicorn.Server):
    """Leaves signals to us: uvicorn's handler would close the listeners at once and
    refuse new connections instead of answering them 503 while draining."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _configs(settings: Settings, app: FastAPI, tls: bool) -> tuple[uvicorn.Config, uvicorn.Config]:
    protocol = limited_protocol(
        settings.max_header_size, settings.max_header_count, settings.read_timeout
    )
    common: dict[str, Any] = {
        "http": protocol,
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's loggers go through ours (same format, same file)
        "access_log": False,  # one access line per request comes from our middleware
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": UVICORN_GRACE,
    }
    tcp = uvicorn.Config(
        app,
        host=settings.http_addr,
        port=settings.http_port,
        limit_concurrency=settings.max_connections,
        ssl_certfile=str(settings.tls_cert) if tls else None,
        ssl_keyfile=str(settings.tls_key) if tls else None,
        **common,
    )
    local = uvicorn.Config(LocalSocketApp(app), lifespan="off", limit_concurrency=64, **common)
    return tcp, local


def warn_if_exposed(settings: Settings, has_keys: bool) -> None:
    if is_loopback_bind(settings.http_addr) or has_keys:
        return
    log.warning(
        "\n%s\nWARNING: listening on %s with NO API KEY. Anyone who can reach this address "
        "can use the models. Set MULLAMA_API_KEY or --api-key-file. Model management is "
        "refused to non-local callers%s.\n%s",
        "!" * 78,
        settings.http_addr,
        " (but --allow-remote-admin is set!)" if settings.allow_remote_admin else "",
        "!" * 78,
    )


def make_store_folder(settings: Settings) -> None:
    """The model store's folder (``~/.mullama/models`` by default), made at start: on a
    fresh machine there is none until the first pull, and /health's disk probe reported
    the store ``down`` (the daemon ``degraded``) until then. One that cannot be made is
    logged; the daemon serves its embedded model and files without it."""
    path = Path(settings.cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("the model store %s cannot be made: %s", path, exc)


def serve(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.log_format, settings.log_file)
    make_store_folder(settings)
    try:
        tls = check_tls(settings)
        sock_path = socket_path(settings.socket)
        manager = ModelManager(settings)
        app = create_app(settings, manager)
    except (MullamaError, ConfigError) as exc:
        log.error("%s", exc.message if isinstance(exc, MullamaError) else exc)
        return 1
    warn_if_exposed(settings, bool(app.state.keys))
    control = ControlSocket(sock_path) if sock_path is not None else None
    try:
        unix_sock = control.bind() if control is not None else None
    except ControlSocketError as exc:
        log.error("%s", exc)
        return 1
    app.state.control_socket = str(sock_path) if sock_path else None
    try:
        return _run(_serve(settings, app, manager, tls, unix_sock))
    finally:
        if control is not None:
            control.remove()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _guard(coro: Coroutine[Any, Any, None]) -> None:
    # uvicorn calls sys.exit() when startup fails; keep that inside this task.
    with contextlib.suppress(SystemExit):
        await coro


def reload(settings: Settings, app: FastAPI) -> None:
    """SIGHUP (what logrotate's postrotate, or a closed terminal, sends): reopen the log
    file and read the API keys again; the daemon keeps serving. A key file that no longer
    reads keeps the keys in force."""
    reopen_log_files()
    try:
        fresh = KeyRing.from_settings(settings)
    except (ConfigError, OSError) as exc:
        log.error("SIGHUP: API keys not reloaded (the ones in force stay): %s", exc)
        return
    app.state.keys.keys = fresh.keys  # the auth middleware holds this same ring
    log.info("SIGHUP: log file reopened, %d API keys loaded", len(fresh.keys))


async def _serve(
    settings: Settings,
    app: FastAPI,
    manager: ModelManager,
    tls: bool,
    unix_sock: socket.socket | None,
) -> int:
    tcp_config, local_config = _configs(settings, app, tls)
    main = _Server(tcp_config)
    servers = [main]
    local = _Server(local_config) if unix_sock is not None else None
    if local is not None:
        servers.append(local)
    shutdown = Shutdown(app.state.lifecycle, app.state.inflight, servers, settings.shutdown_timeout)
    app.state.shutdown = shutdown
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, reload, settings, app)
    tasks = [asyncio.ensure_future(_guard(main.serve()))]
    if local is not None:
        tasks.append(asyncio.ensure_future(_guard(local.serve(sockets=[unix_sock]))))
    try:
        await tasks[0]
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await manager.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0 if main.started else 1
