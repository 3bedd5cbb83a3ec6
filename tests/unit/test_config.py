import subprocess
import sys

import pytest

from mullama.cli import build_parser
from mullama.config import ENV_ONLY_FIELDS, Settings, load_settings


def _parse(*argv):
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("command", "func")}


def test_defaults(monkeypatch):
    for key in ("MULLAMA_PARALLEL", "MULLAMA_MODEL", "MULLAMA_HTTP_PORT"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings(_parse())
    assert (s.http_addr, s.http_port, s.parallel, s.context_size) == ("127.0.0.1", 8080, 4, 4096)
    assert s.model == []


def test_flags_override_env_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("MULLAMA_PARALLEL", "6")
    monkeypatch.setenv("MULLAMA_HTTP_PORT", "9000")
    monkeypatch.setenv("MULLAMA_MODEL", "a.gguf, b=c.gguf")
    s = load_settings(_parse("--parallel", "2", "--model", "x.gguf", "--model", "y.gguf"))
    assert s.parallel == 2
    assert s.http_port == 9000
    assert s.model == ["x.gguf", "y.gguf"]
    assert load_settings(_parse()).model == ["a.gguf", "b=c.gguf"]


def test_every_field_has_a_flag_and_a_description():
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name, info in Settings.model_fields.items():
        assert info.description
        if name in ENV_ONLY_FIELDS:  # secrets: no flag, so they never show up in `ps`
            assert "--" + name.replace("_", "-") + " " not in help_text
            continue
        assert "--" + name.replace("_", "-") in help_text


def test_invalid_values_are_refused():
    with pytest.raises(ValueError):
        load_settings({"parallel": 0})


def test_serve_with_bad_value_exits_1_with_a_message():
    proc = subprocess.run(
        [sys.executable, "-m", "mullama", "serve", "--parallel", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "parallel" in proc.stderr


def test_serve_with_missing_model_file_exits_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mullama", "serve", "--model", str(tmp_path / "none.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "none.gguf" in proc.stderr


def test_console_script_and_module_agree():
    from pathlib import Path

    script = Path(sys.executable).parent / "mullama"
    outs = [
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for cmd in ([str(script), "--version"], [sys.executable, "-m", "mullama", "--version"])
    ]
    assert outs[0].startswith("mullama ")
    assert outs[0] == outs[1]


def test_config_reference_is_current():
    from pathlib import Path

    from mullama.config import settings_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
    assert settings_markdown() in doc, (
        "docs/CONFIG.md is stale: regenerate it (mullama config docs)"
    )


def test_every_field_is_declared_by_exactly_one_section():
    from mullama.config import SECTIONS, section_of

    owners = {
        name: [s for s, cls in SECTIONS.items() if name in cls.model_fields]
        for name in Settings.model_fields
    }
    assert all(len(found) == 1 for found in owners.values()), owners
    assert section_of("http_port") == "server" and section_of("parallel") == "models"
    assert section_of("tls_cert") == "security"


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("context_size", "8", False), ("context_size", "64", True),
        ("parallel", "0", False), ("parallel", "257", False), ("parallel", "2", True),
        ("batch_size", "8", False), ("gpu_layers", "-2", False), ("gpu_layers", "-1", True),
        ("threads", "-1", False), ("threads", "0", True), ("parallel", "two", False),
    ],
)  # fmt: skip
def test_model_opt_obeys_the_rules_of_the_global_flag(key, value, ok):
    from mullama.errors import ClientError
    from mullama.models.options import parse_model_opts

    if ok:
        load_settings({key: value})
        assert getattr(parse_model_opts([f"m:{key}={value}"])["m"], key) == int(value)
        return
    with pytest.raises(ValueError):
        load_settings({key: value})
    with pytest.raises(ClientError, match=f"--model-opt 'm:{key}={value}': {key}: Input should"):
        parse_model_opts([f"m:{key}={value}"])


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("max_tokens", "8", True), ("max_tokens", "-1", False),
        ("temperature", "0", True), ("temperature", "2.5", False), ("temperature", "nan", False),
        ("top_k", "1", True), ("top_k", "-1", False), ("top_p", "0", False),
        ("min_p", "1.5", False), ("repeat_penalty", "0", False), ("repeat_last_n", "-1", True),
        ("repeat_last_n", "-2", False), ("seed", "3", True), ("seed", str(2**64), False),
    ],
)  # fmt: skip
def test_model_opt_request_defaults_obey_the_request_fields_bounds(key, value, ok):
    """The request defaults have no global flag: a value is checked by the bounds a
    request's own field of that name has (a request's temperature is at most 2)."""
    from mullama.errors import ClientError
    from mullama.models.options import parse_model_opts

    if ok:
        assert getattr(parse_model_opts([f"m:{key}={value}"])["m"], key) == float(value)
        return
    with pytest.raises(ClientError, match=f"--model-opt 'm:{key}={value}': {key}: "):
        parse_model_opts([f"m:{key}={value}"])


def test_a_models_own_max_tokens_wins_over_the_global_cap():
    from mullama.models.options import ModelOptions, parse_model_opts

    settings = load_settings({"max_tokens": 8})
    opts = parse_model_opts(["a:max_tokens=5", "a:temperature=0.2", "a:seed=7"])
    assert opts["a"].with_defaults(settings).max_tokens == 5
    assert ModelOptions().with_defaults(settings).max_tokens == 8
    assert opts["a"].request_defaults() == {"temperature": 0.2, "seed": 7}


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [("think", "false", False), ("think", "true", True), ("reasoning_budget", "64", 64),
     ("reasoning_budget", "-1", -1), ("reasoning_format", "none", "none"),
     ("reasoning_budget", "-2", None), ("reasoning_format", "raw", None),
     ("think", "maybe", None)],
)  # fmt: skip
def test_model_opt_thinking_defaults_obey_the_global_flags_rules(key, value, read):
    from mullama.errors import ClientError
    from mullama.models.options import parse_model_opts

    if read is None:
        with pytest.raises(ClientError, match=f"--model-opt 'm:{key}={value}': {key}: "):
            parse_model_opts([f"m:{key}={value}"])
        return
    assert getattr(parse_model_opts([f"m:{key}={value}"])["m"], key) == read
    if key != "think":  # think has no global flag
        assert getattr(load_settings({key: value}), key) == read
