"""benchmarks/synthetic/make_lora.py writes the layout llama.cpp's adapter loader checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf

from mullama.models.embedded import embedded_model_path

ROOT = Path(__file__).resolve().parents[2]
BASE = embedded_model_path()


def _make_lora():
    spec = importlib.util.spec_from_file_location(
        "make_lora", ROOT / "benchmarks" / "synthetic" / "make_lora.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_lora


def _str(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def test_adapter_keys_and_shapes(tmp_path: Path) -> None:
    out = _make_lora()(BASE, tmp_path / "a.gguf", rank=4, alpha=8.0)
    reader = gguf.GGUFReader(out)
    assert _str(reader, "general.type") == "adapter"
    assert _str(reader, "general.architecture") == "llama"
    assert _str(reader, "adapter.type") == "lora"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    base = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(BASE).tensors}
    tensors = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    q_in, q_out = base["blk.0.attn_q.weight"]
    assert tensors["blk.0.attn_q.weight.lora_a"] == [q_in, 4]  # ne: [in, rank]
    assert tensors["blk.0.attn_q.weight.lora_b"] == [4, q_out]  # ne: [rank, out]
    assert len(tensors) == 2 * 7 * sum(1 for n in base if n.endswith("attn_q.weight"))


def test_same_seed_same_file(tmp_path: Path) -> None:
    make = _make_lora()
    one = make(BASE, tmp_path / "1.gguf", rank=2).read_bytes()
    assert one == make(BASE, tmp_path / "2.gguf", rank=2).read_bytes()
    assert one != make(BASE, tmp_path / "3.gguf", rank=2, seed=1).read_bytes()
