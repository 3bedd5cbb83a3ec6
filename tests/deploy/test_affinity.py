"""Conversation affinity behind nginx and HAProxy (the configs in deploy/): each turn of a
conversation that names itself (X-Session-Id) reaches the instance that holds its KV
cache, so its history is found again; without the header, turns land wherever the
balancer sends them and most histories are computed again."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL
from tests.deploy.test_scaleout import _cluster

LEAN = ("--parallel", "1", "--context-size", "1024", "--session-disk", "0")
CONVERSATIONS = 4  # not a multiple of the instances: round robin would not line turns up


def _document(k: int) -> str:
    return f"Notes {k}: " + " ".join(
        f"item {k}-{i} is filed under shelf {i % 9}" for i in range(30)
    )


def _hit_rate(cluster, affinity: bool) -> float:
    """Two turns per conversation, one after the other; the share of the second turns'
    prompt tokens found in the KV cache."""
    chats = {k: [{"role": "user", "content": _document(k)}] for k in range(CONVERSATIONS)}
    cached = prompt = 0
    with cluster.client() as client:
        for turn in range(2):
            for k, messages in chats.items():
                headers = {"X-Session-Id": f"conversation-{k}-{affinity}"} if affinity else {}
                r = client.post("/v1/chat/completions", headers=headers, json={
                    "model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0,
                })  # fmt: skip
                assert r.status_code == 200, r.text
                messages += [r.json()["choices"][0]["message"],
                             {"role": "user", "content": "And the next shelf?"}]  # fmt: skip
                if turn == 1:
                    usage = r.json()["usage"]
                    cached += usage["prompt_tokens_details"]["cached_tokens"]
                    prompt += usage["prompt_tokens"]
    return cached / prompt


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_a_conversation_comes_back_to_the_instance_that_holds_it(tmp_path, proxy):
    with _cluster(tmp_path, proxy, *LEAN) as cluster:
        without = _hit_rate(cluster, affinity=False)
        with_affinity = _hit_rate(cluster, affinity=True)
    print(f"{proxy}: hit rate with affinity {with_affinity:.2f}, without {without:.2f}")
    assert with_affinity > 0.8, (with_affinity, without)
    assert with_affinity > without + 0.4, (with_affinity, without)
