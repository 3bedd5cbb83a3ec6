"""Mullama: a production LLM inference daemon."""

__version__ = "0.1.0"
