"""TLS: check the certificate and key before starting, so a bad pair fails loudly."""

from __future__ import annotations

import ssl

from ..config import ConfigError, Settings
from ..files import warn_if_readable_by_others


def check_tls(settings: Settings) -> bool:
    """True when HTTPS is configured and the pair loads; ConfigError with a clear message
    when only one is given, a file is missing, or the key does not match the certificate."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return False
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    for path, what in ((cert, "certificate"), (key, "key")):
        if not path.is_file():
            raise ConfigError(f"TLS {what} file {path} does not exist")
    warn_if_readable_by_others(key, "TLS private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            reason = "the private key does not match the certificate"
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {reason}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read TLS certificate/key: {exc}") from exc
    return True
