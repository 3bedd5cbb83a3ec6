"""llama-server's /embedding and /embeddings through the app's whole ASGI stack, with a
fake model manager behind them (the real model answers in
tests/e2e/test_embedding_options.py): its shape, embd_normalize passed to the engine, a
vector per token for a model with pooling none, and 400s naming the field."""

from __future__ import annotations

import base64
import contextlib
import struct

import pytest
from starlette.testclient import TestClient

from mullama.config import Settings
from mullama.daemon.app import create_app
from mullama.engine.protocol import Embeddings


class _Models:
    default_name = "m"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def route(self, name):
        return name

    async def embed(self, name, inputs, truncate=False, keep_alive=None, norm=2,
                    per_token=False):  # fmt: skip
        self.calls.append((name, inputs, truncate, norm, per_token))
        if name == "tok":
            return Embeddings([], 3, token_vectors=[[[1.0], [2.0]] for _ in inputs])
        return Embeddings([[float(i), 0.5] for i in range(len(inputs))], 2 * len(inputs))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(Settings(cache_dir=str(tmp_path_factory.mktemp("models"))))
    app.state.models = _Models()
    return app


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080")


@pytest.mark.parametrize("path", ["/embedding", "/embeddings"])
def test_one_item_per_input_with_its_pooled_vector_in_a_list(client, app, path):
    out = client.post(path, json={"content": ["a", "b"], "embd_normalize": -1}).json()
    assert out == [{"index": 0, "embedding": [[0.0, 0.5]]},
                   {"index": 1, "embedding": [[1.0, 0.5]]}]  # fmt: skip
    assert app.state.models.calls[-1] == ("m", ["a", "b"], False, -1, True)
    one = client.post(path, json={"input": "a"}).json()
    assert one == [{"index": 0, "embedding": [[0.0, 0.5]]}]
    assert app.state.models.calls[-1][3] == 2  # unit length by default, as llama-server


def test_pooling_none_gives_each_tokens_vector(client):
    out = client.post("/embedding", json={"model": "tok", "content": "a"}).json()
    assert out == [{"index": 0, "embedding": [[1.0], [2.0]]}]


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "content"), ({"content": []}, "content"), ({"content": "a", "embd_normalize": -2},
     "embd_normalize"), ({"content": "a", "embd_normalize": "2"}, "embd_normalize")],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(client, body, param):
    r = client.post("/embedding", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


class _Engine:
    """An engine of 4-wide vectors whose second input is always cut to fit."""

    name = "smollm2:135m"
    info = None

    async def embed(self, inputs, truncate=False, norm=2, per_token=False):
        vectors = [[0.5, 0.5, 0.5, 0.5] for _ in inputs]
        return Embeddings(vectors, len(inputs), [1] if truncate and len(inputs) > 1 else [])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The app with its real model manager, whose engines are all one fake."""
    app = create_app(Settings(cache_dir=str(tmp_path_factory.mktemp("models"))))

    @contextlib.asynccontextmanager
    async def engine(target, keep_alive):
        yield _Engine()

    async def load(target, keep_alive=None):
        return 0.0  # Ollama's embed loads first (load_duration): nothing to start here

    app.state.models._engine = engine
    app.state.models.load = load
    return TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080")


def test_openai_dimensions_and_base64(real):
    body = {"model": "smollm2:135m", "input": ["a", "b"], "dimensions": 2}
    out = real.post("/v1/embeddings", json=body).json()
    assert [d["embedding"] for d in out["data"]] == [pytest.approx([0.7071068] * 2)] * 2
    b64 = real.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == pytest.approx((0.7071068, 0.7071068))
    r = real.post("/v1/embeddings", json={**body, "dimensions": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_ollama_dimensions_and_the_truncation_header(real):
    body = {"model": "smollm2:135m", "input": ["a", "b"], "dimensions": 1}
    r = real.post("/api/embed", json=body)
    assert r.json()["embeddings"] == [[1.0], [1.0]]
    assert r.headers["mullama-inputs-truncated"] == "1"  # truncate: Ollama's default true
    r = real.post("/api/embed", json={**body, "truncate": False})
    assert "mullama-inputs-truncated" not in r.headers
    r = real.post("/api/embed", json={**body, "dimensions": 9})
    assert r.status_code == 400 and "dimensions" in r.json()["error"]


def test_too_many_inputs_is_a_400(client):
    r = client.post("/embedding", json={"content": ["a"] * 2049})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"
