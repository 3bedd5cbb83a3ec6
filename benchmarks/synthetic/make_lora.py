"""Write a random-weight LoRA adapter GGUF for a llama-architecture base model.

No adapter can be downloaded on these machines, so tests and benchmarks make one. The file
has the layout llama.cpp's ``convert_lora_to_gguf.py`` writes and ``llama_adapter_lora_init``
checks (src/llama-adapter.cpp): ``general.type=adapter``, ``general.architecture`` equal to
the base model's, ``adapter.type=lora``, ``adapter.lora.alpha``, and for each adapted weight
``<name>.lora_a`` (torch shape ``(rank, in)``, GGUF ne ``[in, rank]``) and ``<name>.lora_b``
(torch ``(out, rank)``, ne ``[rank, out]``), in F16 (the converter's default ``--outtype``).
The shapes are read from the base model's own GGUF, so any llama-family base fits.

The weights are noise: an adapter at scale 1 changes greedy output, at scale 0 it does not.

    python benchmarks/synthetic/make_lora.py BASE.gguf OUT.gguf [--rank 8] [--alpha 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

# The projections PEFT fine-tunes usually target (q_proj ... down_proj), by GGUF name.
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _field_str(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def _targets(reader: gguf.GGUFReader) -> list[tuple[str, int, int]]:
    """(tensor name, in features, out features) of each adapted weight, in file order."""
    found = []
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in TARGETS:
            n_in, n_out = (int(n) for n in tensor.shape[:2])  # GGUF ne order: [in, out]
            found.append((tensor.name, n_in, n_out))
    return found


def make_lora(
    base: Path, out: Path, *, rank: int = 8, alpha: float = 16.0, seed: int = 0, std: float = 0.05
) -> Path:
    """Write the adapter for ``base`` to ``out`` and return ``out``.

    ``lora_a`` is drawn with std 1/sqrt(in) (as PEFT's Kaiming start), ``lora_b`` with
    ``std`` (PEFT starts it at zero; a trained one is not): the same seed, the same file."""
    reader = gguf.GGUFReader(base)
    arch = _field_str(reader, "general.architecture")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, arch)  # writes general.architecture
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(f"random LoRA r{rank} seed {seed}")
    for name, n_in, n_out in _targets(reader):
        lora_a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(rank, n_in))
        lora_b = rng.normal(0.0, std, size=(n_out, rank))
        writer.add_tensor(f"{name}.lora_a", lora_a.astype(np.float16))
        writer.add_tensor(f"{name}.lora_b", lora_b.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the base model's GGUF")
    parser.add_argument("out", type=Path, help="where to write the adapter")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--std", type=float, default=0.05, help="std of lora_b")
    args = parser.parse_args(argv)
    make_lora(args.base, args.out, rank=args.rank, alpha=args.alpha, seed=args.seed, std=args.std)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
