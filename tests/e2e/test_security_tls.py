"""HTTPS with a certificate made in the test, verified by the openai client."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import MODEL, Daemon, wait_for


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(folder, name: str, key) -> tuple:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mullama test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_verified_by_the_openai_client(tmp_path):
    cert, key = _write_pair(tmp_path, "server", _key())
    d = Daemon("--tls-cert", str(cert), "--tls-key", str(key), "--parallel", "1",
               "--context-size", "256")  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{d.port}"
    try:

        def healthy() -> bool:
            assert d.proc.poll() is None, d.log()
            try:  # 503 while the model loads, a refused connection before the bind
                return httpx.get(url + "/health", verify=ctx, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=120, interval=0.2)
        with httpx.Client(verify=ctx, timeout=60) as http:
            client = openai.OpenAI(
                base_url=url + "/v1", api_key="unused", http_client=http, max_retries=0
            )
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.choices[0].message.content is not None
        # Without trusting the certificate, verification fails.
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{d.port}/health", timeout=5).raise_for_status()
    finally:
        d.stop()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mullama", "serve", "--socket", "none", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_certificates_refuse_to_start(tmp_path):
    cert, _ = _write_pair(tmp_path, "a", _key())
    _, other_key = _write_pair(tmp_path, "b", _key())
    proc = _serve("--tls-cert", str(cert), "--tls-key", str(other_key))
    assert proc.returncode == 1
    assert "does not match" in proc.stderr
    proc = _serve("--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(other_key))
    assert proc.returncode == 1 and "missing.crt" in proc.stderr
    proc = _serve("--tls-cert", str(cert))
    assert proc.returncode == 1 and "--tls-key" in proc.stderr
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    proc = _serve("--tls-cert", str(garbage), "--tls-key", str(other_key))
    assert proc.returncode == 1 and "garbage.crt" in proc.stderr
