"""The ground floor's wire forms: how bodies are framed (JSON, server-sent events,
NDJSON) and the shape of an error in each API. Everything above may use them; they
import nothing of Mullama but ``errors.py``."""
