"""llama-server's flags: flash attention in its three spellings, -n, the sampling defaults,
the reasoning flags."""

from __future__ import annotations

import pytest

from mullama.cli.llamaserver import translate
from mullama.errors import ClientError


@pytest.mark.parametrize(
    ("argv", "value"),
    [(["-fa", "-c", "4096"], "on"), (["-fa", "off"], "off"), (["--flash-attn", "auto"], "auto"),
     (["--flash-attn=off"], "off"), (["-c", "4096", "-fa"], "on")],
)  # fmt: skip
def test_flash_attention_alone_means_on_and_takes_a_value(argv, value):
    out, _ = translate(argv, env={})
    assert out[out.index("--flash-attn") + 1] == value


@pytest.mark.parametrize("argv", [["-fa", "yes"], ["--flash-attn=1"]])
def test_a_flash_attention_value_other_than_on_off_auto_is_refused(argv):
    with pytest.raises(ClientError, match="on, off or auto"):
        translate(argv, env={})


def test_n_predict_is_the_answer_length_cap():
    for flag in ("-n", "--n-predict", "--predict"):
        out, _ = translate([flag, "8"], env={})
        assert out == ["--max-tokens", "8"]
    for value in ("-1", "-2"):  # no limit; until the context is full: no cap either way
        assert translate(["-n", value], env={})[0] == ["--max-tokens", "0"]


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_an_n_predict_that_means_nothing_here_is_refused(value):
    with pytest.raises(ClientError, match="-n"):
        translate(["-n", value], env={})


def test_sampling_flags_are_the_m_models_request_defaults(tmp_path):
    model = tmp_path / "SmolLM2-135M.gguf"
    argv = ["-m", str(model), "--temp", "0", "--top-k=1", "--top-p", "0.9", "--min-p", "0.1",
            "--repeat-penalty", "1.1", "--repeat-last-n", "32", "-s", "3"]  # fmt: skip
    out, _ = translate(argv, env={})
    opts = [out[i + 1] for i, arg in enumerate(out) if arg == "--model-opt"]
    assert opts == [
        "SmolLM2-135M:temperature=0", "SmolLM2-135M:top_k=1", "SmolLM2-135M:top_p=0.9",
        "SmolLM2-135M:min_p=0.1", "SmolLM2-135M:repeat_penalty=1.1",
        "SmolLM2-135M:repeat_last_n=32", "SmolLM2-135M:seed=3",
    ]  # fmt: skip
    # -a names the model; --seed -1 is llama-server's random seed: nothing to set.
    out, _ = translate(["-m", str(model), "-a", "smol", "--temp", "0.5", "--seed", "-1"], env={})
    assert [out[i + 1] for i, arg in enumerate(out) if arg == "--model-opt"] == [
        "smol:temperature=0.5"
    ]


def test_sampling_flags_without_a_model_say_what_to_do():
    with pytest.raises(ClientError, match="give -m with it, or use --model-opt NAME:top_k=1"):
        translate(["--top-k", "1"], env={})


def test_a_translated_model_opt_is_checked_as_any_model_opt():
    from mullama.models.options import parse_model_opts

    out, _ = translate(["-m", "/m/x.gguf", "--temp", "9"], env={})
    with pytest.raises(ClientError, match="temperature: Input should be less than or equal to 2"):
        parse_model_opts([out[out.index("--model-opt") + 1]])


def test_reasoning_flags_are_mullamas_own_and_the_kwargs_switch_is_the_models_default():
    argv = ["-m", "/m/x.gguf", "--reasoning-format", "none", "--reasoning-budget", "0",
            "--chat-template-kwargs", '{"enable_thinking": false}']  # fmt: skip
    out, _ = translate(argv, env={})
    assert out[out.index("--reasoning-format") + 1] == "none"
    assert out[out.index("--reasoning-budget") + 1] == "0"
    assert out[out.index("--model-opt") + 1] == "x:think=false"
    out, _ = translate(["-m", "/m/x.gguf", '--chat-template-kwargs={"thinking": true}'], env={})
    assert out[out.index("--model-opt") + 1] == "x:think=true"


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--reasoning-format", "deepseek-legacy"], "use deepseek"),
     (["-m", "x.gguf", "--chat-template-kwargs", "[1]"], "a JSON object"),
     (["-m", "x.gguf", "--chat-template-kwargs", "{"], "a JSON object"),
     (["-m", "x.gguf", "--chat-template-kwargs", '{"x": 1}'], "each request's"),
     (["-m", "x.gguf", "--chat-template-kwargs", '{"enable_thinking": "yes"}'], "true or false"),
     (["--chat-template-kwargs", '{"thinking": true}'], "NAME:think=true")],
)  # fmt: skip
def test_reasoning_flags_with_no_counterpart_say_what_to_do(argv, match):
    with pytest.raises(ClientError, match=match):
        translate(argv, env={})
