"""--model-alias: names a client insists on, mapped to local models."""

from __future__ import annotations

import pytest

from mullama.config import Settings
from mullama.errors import ClientError
from mullama.models.options import parse_aliases


def test_aliases_map_names_and_the_environment_takes_a_list(monkeypatch):
    assert parse_aliases(["claude-sonnet-4-5=qwen", " gpt-5 = qwen "]) == {
        "claude-sonnet-4-5": "qwen",
        "gpt-5": "qwen",
    }
    monkeypatch.setenv("MULLAMA_MODEL_ALIAS", "a=smollm2:135m, b=smollm2:135m")
    assert Settings().model_alias == ["a=smollm2:135m", "b=smollm2:135m"]


@pytest.mark.parametrize(
    ("items", "says"),
    [(["nonsense"], "expected NAME=MODEL"), (["a="], "expected NAME=MODEL"),
     (["a=b", "b=c"], "'b' is itself an alias")],
)  # fmt: skip
def test_malformed_aliases_and_chains_are_refused(items, says):
    with pytest.raises(ClientError, match=says):
        parse_aliases(items)
