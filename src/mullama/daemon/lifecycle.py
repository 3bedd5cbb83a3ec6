"""The daemon's lifecycle state, read by readiness checks and request admission."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    """One per app (app.state.lifecycle). ``failed_models`` holds preloaded models that
    failed to load, with the reason: the daemon serves the rest but is not ready."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.failed_models: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and not self.failed_models

    @property
    def accepting(self) -> bool:
        """New inference requests are taken (not while draining or stopped)."""
        return self.phase in (Phase.STARTING, Phase.READY)
