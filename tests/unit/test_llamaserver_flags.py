"""llama-server's flash-attention flag in its three spellings."""

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
