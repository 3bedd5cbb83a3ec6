"""Hostile model files and templates: a corpus made here with the `gguf` package
(llama.cpp's own GGUF writer and reader) and byte-level mutations of the real model.
Each is refused by the GGUF check with InvalidGGUF (a clear message naming the file),
never another exception, never a crash; the hang guard is pytest's timeout. Chat
templates that try to escape the sandbox, loop for ever or build huge strings fail with
TemplateRenderError at once."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from mullama.engine.chat_template import ChatTemplate, TemplateLimit, TemplateRenderError
from mullama.models.embedded import embedded_model_path
from mullama.models.gguf import InvalidGGUF, read_gguf

N_VOCAB = 64


def _write(path: Path, *, vocab: int = N_VOCAB, tensors: int = 3) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_tensor("token_embd.weight", np.zeros((N_VOCAB, 32), dtype=np.float32))
    for i in range(tensors - 1):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ones((32, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _part(path: Path, tensor: int, part: int) -> int:
    """The byte offset of one part of a tensor's info (-1: its data offset, -2: its
    type, 3: its dims) in the file, as gguf's reader finds it."""
    field = gguf.GGUFReader(str(path)).tensors[tensor].field
    return field.offset + sum(p.nbytes for p in field.parts[: part % len(field.parts)])


def _patch(path: Path, at: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    return _write(tmp_path / "good.gguf")


def _refused(path: Path, why: str) -> str:
    with pytest.raises(InvalidGGUF) as exc:
        read_gguf(path)
    message = exc.value.message
    assert str(path) in message and "not a valid GGUF model file" in message, message
    assert why in message, message
    return message


def test_the_generated_file_is_valid(good):
    info = read_gguf(good)
    assert len(info.tensors) == 3 and info.architecture == "llama"


def test_header_faults(good, tmp_path):
    raw = good.read_bytes()
    cases = {
        "bad magic": raw.replace(b"GGUF", b"GGML", 1),
        "unsupported GGUF version": raw[:4] + struct.pack("<I", 1) + raw[8:],
        "unsupported GGUF version 99": raw[:4] + struct.pack("<I", 99) + raw[8:],
        "implausible counts": raw[:8] + struct.pack("<Q", 1 << 40) + raw[16:],
        "implausible counts (3 tensors, ": raw[:16] + struct.pack("<Q", 1 << 50) + raw[24:],
        # the first metadata key's length, far past the end of the file
        "string length out of range": raw[:24] + struct.pack("<Q", len(raw) * 4) + raw[32:],
    }
    for why, data in cases.items():
        path = tmp_path / "case.gguf"
        path.write_bytes(data)
        _refused(path, why)


def test_truncated_at_many_offsets(good, tmp_path):
    raw = good.read_bytes()
    for cut in sorted({*range(0, len(raw), max(1, len(raw) // 97)), 3, 4, 8, 23, len(raw) - 1}):
        path = tmp_path / "cut.gguf"
        path.write_bytes(raw[:cut])
        with pytest.raises(InvalidGGUF):
            read_gguf(path)


def test_tensor_table_faults(tmp_path):
    def fresh() -> Path:
        return _write(tmp_path / "t.gguf")

    _refused(_patch(fresh(), _part(fresh(), 1, -1), struct.pack("<Q", 1 << 40)), "past the end")
    # the second tensor's data starts inside the first one's
    _refused(_patch(fresh(), _part(fresh(), 1, -1), struct.pack("<Q", 32)), "overlap")
    _refused(_patch(fresh(), _part(fresh(), 1, -1), struct.pack("<Q", 33)), "not aligned")
    _refused(_patch(fresh(), _part(fresh(), 0, -2), struct.pack("<I", 99)), "unknown type 99")
    # Q4_0 (blocks of 32) for a first dimension of 32 is fine; 31 is not
    path = _patch(fresh(), _part(fresh(), 1, -2), struct.pack("<I", 2))
    _patch(path, _part(path, 1, 3), struct.pack("<Q", 31))
    _refused(path, "not a multiple of its block size")
    _refused(_patch(fresh(), _part(fresh(), 1, 3), struct.pack("<Q", 0)), "has shape")


def test_a_vocabulary_shorter_than_the_embedding(tmp_path):
    _refused(_write(tmp_path / "v.gguf", vocab=N_VOCAB - 8), "the vocabulary has 56 tokens")


def test_byte_mutations_of_the_real_model_are_refused_or_harmless(tmp_path):
    """Random bytes written into the real model's header, metadata and tensor table
    (fixed seed): each file is refused with InvalidGGUF or still parses; nothing else."""
    info = read_gguf(embedded_model_path())
    with embedded_model_path().open("rb") as f:
        real = f.read(info.data_offset + 4096)
    rng = random.Random(1234)
    refused = 0
    path = tmp_path / "m.gguf"
    for _ in range(60):
        raw = bytearray(real)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(raw) - 8)
            raw[at : at + 8] = rng.randbytes(8)
        with path.open("wb") as f:  # the tensor data as a hole of the real size
            f.write(raw)
            f.truncate(info.file_size)
        try:
            read_gguf(path)
        except InvalidGGUF:
            refused += 1
    assert refused > 0


def test_truncations_of_the_real_model(tmp_path):
    real = embedded_model_path().read_bytes()
    path = tmp_path / "t.gguf"
    for cut in (5, 100, 10_000, 1 << 20, len(real) // 2, len(real) - 100):
        path.write_bytes(real[:cut])
        _refused(path, "truncated" if cut > 100 else "")


HOSTILE_TEMPLATES = {
    "sandbox escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "sandbox escape through a filter": "{{ (messages|first).__class__.__init__.__globals__ }}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "a loop over a long join": "{{ range(50000000)|join(',') }}",
    "string repetition": "{{ 'x' * 1000000000 }}",
    "a huge pad": "{{ 'x'.ljust(1000000000) }}",
    "a huge filter argument": "{{ 'x'|center(1000000000) }}",
    "doubling in a namespace": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "doubling by recursion": (
        "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
        "{{ f('x', 64) }}"
    ),
    "endless recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "a huge output": "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "a huge power": "{{ 2 ** 100000000 }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_templates_fail_at_once(name):
    with pytest.raises(TemplateRenderError):
        ChatTemplate(HOSTILE_TEMPLATES[name]).render([{"role": "user", "content": "hi"}])


def test_budget_errors_say_what_was_exceeded():
    with pytest.raises(TemplateLimit, match="steps"):
        ChatTemplate(HOSTILE_TEMPLATES["nested loops"]).render([])
    with pytest.raises(TemplateLimit, match="items"):
        ChatTemplate(HOSTILE_TEMPLATES["string repetition"]).render([])
    # ... and the budget is per render: the same template renders again afterwards.
    t = ChatTemplate("{% for i in range(1000000) %}{% endfor %}ok")
    assert t.render([]) == "ok" and t.render([]) == "ok"
