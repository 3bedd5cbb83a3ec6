"""--config FILE (YAML/TOML) through the same schema; precedence flags > env > file."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mullama.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("MULLAMA_PARALLEL", "MULLAMA_HTTP_PORT", "MULLAMA_API_KEY", "MULLAMA_CONFIG",
                "MULLAMA_API_KEY__FILE", "MULLAMA_MODEL"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


def test_yaml_sections_and_precedence(tmp_path, monkeypatch):
    f = tmp_path / "mullama.yaml"
    f.write_text(
        "server:\n  http_port: 7000\n  request-timeout: 12\n"
        "security:\n  api_key_file: keys.yaml\n  cors_origins: [http://a.example]\n"
        "models:\n  parallel: 3\n  context_size: 1024\n"
    )
    s = load_settings({"config": str(f)})
    assert (s.http_port, s.request_timeout, s.parallel, s.context_size) == (7000, 12, 3, 1024)
    assert s.api_key_file == tmp_path / "keys.yaml"  # relative to the file
    assert s.cors_origins == ["http://a.example"]
    monkeypatch.setenv("MULLAMA_PARALLEL", "5")
    monkeypatch.setenv("MULLAMA_HTTP_PORT", "7001")
    s = load_settings({"config": str(f), "http_port": 7002})
    assert s.parallel == 5  # env beats file
    assert s.http_port == 7002  # flag beats env
    assert s.context_size == 1024  # file beats default


def test_toml_and_env_config_path(tmp_path, monkeypatch):
    f = tmp_path / "mullama.toml"
    f.write_text('[server]\nhttp_addr = "0.0.0.0"\n[models]\nmodel = ["a.gguf"]\n')
    monkeypatch.setenv("MULLAMA_CONFIG", str(f))
    s = load_settings({})
    assert s.http_addr == "0.0.0.0" and s.model == ["a.gguf"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server:\n  http_prot: 1\n", "'server.http_prot'"),
        ("serverz:\n  http_port: 1\n", "'serverz'"),
        ("server:\n  parallel: 2\n", "belongs in section 'models'"),
        ("server:\n  config: x.yaml\n", "'server.config'"),
        ("- 1\n", "expected sections"),
    ],
)
def test_unknown_keys_name_the_key_and_file(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings({"config": str(f)})
    assert needle in str(info.value)
    assert str(f) in str(info.value)


def test_secret_from_file_env(tmp_path, monkeypatch):
    secret = tmp_path / "key"
    secret.write_text("s3cret-value\n")
    monkeypatch.setenv("MULLAMA_API_KEY__FILE", str(secret))
    s = load_settings({})
    assert s.api_key.get_secret_value() == "s3cret-value"
    assert "s3cret" not in repr(s)


def _run(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "mullama", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("security:\n  api_keyz: x\n")
    for cmd in (["serve"], ["config", "show"]):
        proc = _run(*cmd, "--config", str(f))
        assert proc.returncode == 1
        assert "security.api_keyz" in proc.stderr and str(f) in proc.stderr


def test_config_show_hides_secrets(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        "security:\n  api_key: file-secret-123\n"
        "  rate_limit_storage: redis://user:redis-pass-456@127.0.0.1:6379/0\n"
    )
    proc = _run("config", "show", "--config", str(f), "--parallel", "7")
    assert proc.returncode == 0, proc.stderr
    assert "file-secret-123" not in proc.stdout and "redis-pass-456" not in proc.stdout
    shown = yaml.safe_load(proc.stdout)
    assert shown["security"]["api_key"] == "<redacted>"
    assert shown["security"]["rate_limit_storage"].startswith("redis://user:<redacted>@")
    assert shown["models"]["parallel"] == 7
    secret = tmp_path / "k"
    secret.write_text("env-file-secret-789")
    proc = _run("config", "show", env={"MULLAMA_API_KEY__FILE": str(secret)})
    assert "env-file-secret-789" not in proc.stdout
    assert yaml.safe_load(proc.stdout)["security"]["api_key"] == "<redacted>"
