"""A small GGUF reader: header, metadata and tensor table, with the structural checks
done before any load (so a corrupt or truncated file is a clear error, not a crash).

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ClientError

GGUF_MAGIC = b"GGUF"
_MAX_STRING = 64 * 1024 * 1024
_MAX_ARRAY = 64 * 1024 * 1024
_MAX_COUNT = 1 << 24
# The one string array kept as a list: the vocabulary (its length is checked against the
# embedding). Real vocabularies have up to ~262k tokens; others (merges, up to ~500k
# strings; anything a file invents) are skipped by their lengths, never built.
_KEPT_ARRAYS = frozenset({"tokenizer.ggml.tokens"})
_MAX_VOCAB = 1 << 21
_MAX_DIM = 1 << 40  # elements along one tensor dimension

# GGUF metadata value types.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: (block size in elements, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# general.file_type → quantization name (llama_ftype).
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


class InvalidGGUF(ClientError):
    """The file is not a usable GGUF model."""

    code = "invalid_model_file"


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type]
        return self.n_elements // block * size


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture", "unknown"))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.get(f"{self.architecture}.{suffix}", default)

    @property
    def context_length(self) -> int | None:
        value = self.arch_key("context_length")
        return int(value) if value is not None else None

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def quantization(self) -> str:
        ft = self.get("general.file_type")
        if isinstance(ft, int) and ft in FILE_TYPES:
            return FILE_TYPES[ft]
        counts: dict[str, int] = {}
        for t in self.tensors:
            name = GGML_TYPES.get(t.type, ("?", 1, 1))[0]
            counts[name] = counts.get(name, 0) + t.n_elements
        return max(counts, key=counts.__getitem__) if counts else "unknown"

    @property
    def chat_template(self) -> str | None:
        value = self.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None


def human_params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)


class _Reader:
    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f = f
        self.path = path
        self.size = size

    def fail(self, what: str) -> InvalidGGUF:
        return InvalidGGUF(f"{self.path}: not a valid GGUF model file: {what}")

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail("file is truncated")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > _MAX_STRING or self.f.tell() + n > self.size:
            raise self.fail("string length out of range (file corrupt or truncated)")
        return self.read(n).decode("utf-8", "replace")

    def skip_strings(self, n: int) -> None:
        """Past ``n`` strings, each by its length: no string or list is made."""
        for _ in range(n):
            (length,) = struct.unpack("<Q", self.read(8))
            if length > _MAX_STRING or self.f.tell() + length > self.size:
                raise self.fail("string length out of range (file corrupt or truncated)")
            self.f.seek(length, 1)

    def value(self, vtype: int, depth: int = 0, key: str = "") -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth < 2:
            etype = self.unpack("<I")
            n = self.unpack("<Q")
            if n > _MAX_ARRAY:
                raise self.fail("array length out of range")
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                width = struct.calcsize(fmt)
                if self.f.tell() + n * width > self.size:
                    raise self.fail("file is truncated")
                self.f.seek(n * width, 1)  # large arrays (token scores) are not needed
                return f"<array of {n}>"
            if etype == _STRING and key in _KEPT_ARRAYS and depth == 0:
                if n > _MAX_VOCAB:
                    raise self.fail(f"{key} has {n} entries (at most {_MAX_VOCAB})")
                return [self.string() for _ in range(n)]
            if etype == _STRING:
                self.skip_strings(n)
            elif etype == _ARRAY:
                for _ in range(n):  # nested arrays: each skipped, none kept
                    self.value(_ARRAY, depth + 1)
            else:
                raise self.fail(f"unknown metadata value type {etype}")
            return f"<array of {n}>"
        raise self.fail(f"unknown metadata value type {vtype}")


def read_gguf(path: str | Path, check_tensors: bool = True) -> GGUFInfo:
    """Parse and check a GGUF file. Raises InvalidGGUF naming the file and the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise InvalidGGUF(f"{path}: cannot open model file: {exc.strerror}") from exc
    with f:
        r = _Reader(f, path, size)
        if r.read(4) != GGUF_MAGIC:
            raise r.fail("bad magic (expected 'GGUF')")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise r.fail(f"unsupported GGUF version {version}")
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise r.fail(f"implausible counts ({n_tensors} tensors, {n_kv} metadata keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.unpack("<I"), key=key)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
            shape = [r.unpack("<Q") for _ in range(n_dims)]
            ttype = r.unpack("<I")
            offset = r.unpack("<Q")
            tensors.append(TensorInfo(name, shape, ttype, offset))
        alignment = int(metadata.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"alignment {alignment} is not a power of two")
        pos = f.tell()
        data_offset = (pos + alignment - 1) // alignment * alignment
        info = GGUFInfo(path, version, metadata, tensors, data_offset, size)
    if check_tensors:
        _check_tensors(info, alignment)
    return info


def _check_tensors(info: GGUFInfo, alignment: int) -> None:
    """Each tensor's type, shape, alignment and extent inside the file, no two tensors
    sharing bytes, and a vocabulary as long as the embedding says: llama.cpp trusts
    these and aborts the process (or reads out of bounds) when they are wrong."""
    where = f"{info.path}: not a valid GGUF model file"
    spans = []
    for t in info.tensors:
        if t.type not in GGML_TYPES:
            raise InvalidGGUF(f"{where}: tensor {t.name!r} has unknown type {t.type}")
        if not t.shape or any(d <= 0 or d > _MAX_DIM for d in t.shape):
            raise InvalidGGUF(f"{where}: tensor {t.name!r} has shape {t.shape}")
        type_name, block, _ = GGML_TYPES[t.type]
        if t.shape[0] % block:
            raise InvalidGGUF(
                f"{where}: tensor {t.name!r} of type {type_name} has a first dimension "
                f"({t.shape[0]}) that is not a multiple of its block size {block}"
            )
        if t.offset % alignment:
            raise InvalidGGUF(f"{where}: tensor {t.name!r} is not aligned to {alignment} bytes")
        end = info.data_offset + t.offset + t.n_bytes()
        if end > info.file_size:
            raise InvalidGGUF(
                f"{where}: tensor {t.name!r} ends at byte {end}, past the end of the file "
                f"({info.file_size} bytes): the file is truncated"
            )
        spans.append((t.offset, t.offset + t.n_bytes(), t.name))
    spans.sort()
    for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise InvalidGGUF(f"{where}: tensors {name!r} and {other!r} overlap")
    _check_vocabulary(info, where)


def _check_vocabulary(info: GGUFInfo, where: str) -> None:
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
    if not isinstance(tokens, list) or embd is None or len(embd.shape) < 2:
        return
    if len(tokens) < embd.shape[1]:
        raise InvalidGGUF(
            f"{where}: the vocabulary has {len(tokens)} tokens but token_embd.weight has "
            f"{embd.shape[1]} rows"
        )
