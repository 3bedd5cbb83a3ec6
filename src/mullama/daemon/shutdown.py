"""Graceful shutdown, in our order rather than uvicorn's.

First signal (SIGTERM/SIGINT) or ``POST /api/daemon/stop``: the daemon goes DRAINING
(readiness 503, new requests 503 with Retry-After) while the listeners stay open; the
requests in flight get up to the shutdown timeout to finish; what is left is aborted
(streams end with an error event); then the servers stop, the lifespan stops the
workers, and ``serve`` removes the socket and pid file. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

import uvicorn

from ..errors import Unavailable
from .inflight import InflightTracker
from .lifecycle import Lifecycle, Phase

log = logging.getLogger(__name__)

ABORT_GRACE = 5.0  # seconds aborted requests get to write their error and finish


class Shutdown:
    def __init__(
        self,
        lifecycle: Lifecycle,
        tracker: InflightTracker,
        servers: Sequence[uvicorn.Server],
        timeout: float,
    ) -> None:
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.servers = list(servers)
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.started:
            log.warning("%s again: stopping now", name)
            self.request(force=True)
        else:
            log.info("%s: draining (up to %g s for requests in flight)", name, self.timeout)
            self.request()

    def request(self, timeout: float | None = None, force: bool = False) -> None:
        if force:
            self._force()
            return
        if self._task is None:
            drain = self.timeout if timeout is None else timeout
            self._task = asyncio.get_running_loop().create_task(self._drain(drain))

    async def _drain(self, timeout: float) -> None:
        self.lifecycle.phase = Phase.DRAINING
        if len(self.tracker):
            log.info("waiting for %d request(s) in flight", len(self.tracker))
        if not await self.tracker.wait_idle(timeout):
            n = self.tracker.abort_all(
                Unavailable("the daemon is shutting down; this request was aborted")
            )
            log.warning("shutdown timeout (%g s) reached: aborted %d request(s)", timeout, n)
            await self.tracker.wait_idle(ABORT_GRACE)
        for server in self.servers:
            server.should_exit = True

    def _force(self) -> None:
        self.lifecycle.phase = Phase.DRAINING
        self.tracker.abort_all(Unavailable("the daemon is stopping now; this request was aborted"))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        for server in self.servers:
            server.should_exit = True
            server.force_exit = True
