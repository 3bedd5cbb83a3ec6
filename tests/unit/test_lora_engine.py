"""LoRA adapters on SmolLM2's real weights (no worker process): an adapter at scale 0
leaves the base model's greedy output as it is; a scale changes it, the same way each
time; a file that is no adapter of this model is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mullama.engine.llama import Batch, Context, ContextConfig, EngineError, Model, init_backend
from mullama.models.embedded import embedded_model_path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> str:
    spec = importlib.util.spec_from_file_location(
        "make_lora", ROOT / "benchmarks" / "synthetic" / "make_lora.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("lora") / "adapter.gguf"
    return str(module.make_lora(embedded_model_path(), out))


def _greedy(lora: list[tuple[str, float]] | None, n: int = 12) -> list[int]:
    """``n`` greedy tokens after PROMPT, from a fresh model with ``lora``."""
    init_backend()
    model = Model(str(embedded_model_path()), lora=lora)
    ctx = Context(model, ContextConfig(n_ctx=256, n_batch=64, n_seq_max=1, n_threads=2))
    batch = Batch(64)
    try:
        tokens = model.tokenize(PROMPT, add_special=True, parse_special=False)
        out: list[int] = []
        for pos, tok in enumerate(tokens):
            batch.add(tok, pos, 0, pos == len(tokens) - 1)
        for step in range(n):
            ctx.decode(batch)
            nxt = int(ctx.logits(batch.n - 1).argmax())
            out.append(nxt)
            batch.clear()
            batch.add(nxt, len(tokens) + step, 0, True)
        return out
    finally:
        batch.close()
        ctx.close()
        model.close()


def test_scale_zero_is_the_base_model(adapter: str) -> None:
    assert _greedy([(adapter, 0.0)]) == _greedy(None)


def test_a_scale_changes_the_output_deterministically(adapter: str) -> None:
    base = _greedy(None)
    scaled = _greedy([(adapter, 1.0)])
    assert scaled != base
    assert _greedy([(adapter, 1.0)]) == scaled


def test_not_an_adapter_is_refused() -> None:
    init_backend()
    with pytest.raises(EngineError, match="could not load LoRA adapter"):
        Model(str(embedded_model_path()), lora=[(str(embedded_model_path()), 1.0)])
