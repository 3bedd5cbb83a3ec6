"""Reasoning models: what a request asks of the model's thinking (``Think``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Think:
    """What a request asks of the model's thinking, in any dialect's words: ``on`` (None:
    the model's default), ``effort`` ("low", "medium" or "high": a template that reads it
    gets it, others a budget from it) and ``budget`` (thinking tokens; None: no limit
    asked)."""

    on: bool | None = None
    effort: str | None = None
    budget: int | None = None
