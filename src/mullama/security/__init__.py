"""API keys, host checks and rate limits, as plain ASGI middleware."""
