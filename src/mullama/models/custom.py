"""Custom models (Ollama's Modelfile idea, as YAML): a base model plus a system prompt, a
chat template override and default parameters, stored as a manifest.

```yaml
from: smollm2:135m          # a model name, or (CLI only) a path to a .gguf file
system: You are a pirate.
template: "{% for m in messages %}...{% endfor %}"   # Jinja, like tokenizer.chat_template
parameters:
  temperature: 0.2
  think: false              # a reasoning model's default (reasoning_budget: N, too)
  stop: ["\\n\\n"]
  num_ctx: 2048
adapters:                   # LoRA adapter GGUFs, PATH[:scale] (scale 1 when left out)
  - ./pirate-lora.gguf:0.8
```

An adapter file is copied into the store; over the API (``/api/create``), where no file
may be named, an adapter is a blob already in the store, ``sha256:<hex>[:scale]``.

An Ollama-style Go template using ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``
and ``{{ if .X }}...{{ end }}`` is converted to Jinja (it sees the system messages and the
last user message, as Ollama's single-turn templates do).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..engine import knobs, limits
from ..engine.chat_template import ChatTemplate, TemplateRenderError
from ..errors import ClientError, InvalidParameter, ModelNotFound
from .aliases import EMBEDDED_NAME, check_name, hub_source, is_local_path, unknown_model
from .gguf import read_gguf
from .store import AdapterRef, Manifest, ModelStore, check_digest

# The sampling knobs by Ollama's names, with the bounds it has (engine/knobs.py).
_Knobs = create_model("_Knobs", **knobs.fields("ollama"))  # type: ignore[call-overload]


class ModelParameters(_Knobs):  # type: ignore[valid-type,misc]
    """Default request options (Ollama's names): the sampling knobs, the answer's length,
    the context and stop strings; a request's own values win."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_predict: int | None = Field(default=None, ge=-2)
    num_ctx: int | None = Field(default=None, ge=1)
    stop: limits.Stops | None = None
    # A reasoning model's thinking by default (api/thinking.py): on or off, and its most
    # tokens (-1: no limit, 0: off); a request's own choice wins.
    think: bool | None = None
    reasoning_budget: int | None = Field(default=None, ge=-1)


class ModelDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from")
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    adapters: list[str] = Field(default_factory=list)  # PATH or sha256:<hex>, [:scale]


def load_definition(path: Path) -> ModelDefinition:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ClientError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a mapping with at least 'from'")
    return parse_definition(data, where=str(path))


def parse_definition(data: dict[str, Any], where: str = "model definition") -> ModelDefinition:
    params = data.get("parameters")
    if isinstance(params, dict) and isinstance(params.get("stop"), str):
        data = {**data, "parameters": {**params, "stop": [params["stop"]]}}
    try:
        definition = ModelDefinition.model_validate(data)
        ModelParameters.model_validate(definition.parameters)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidParameter(f"{where}: {loc}: {err['msg']}", param=loc) from exc
    return definition


_GO_TAG = re.compile(r"\{\{(-?)\s*(if\s+\.(\w+)|\.(\w+)|end)\s*(-?)\}\}")
_GO_HINT = re.compile(r"\{\{-?\s*(\.|if\s|end\b|range\b|with\b|else\b)")
_GO_VARS = {"System", "Prompt", "Response"}
_JINJA_PRELUDE = (
    "{%- set System = messages | selectattr('role', 'equalto', 'system')"
    " | map(attribute='content') | join('\\n') -%}"
    "{%- set Prompt = (messages | selectattr('role', 'equalto', 'user')"
    " | map(attribute='content') | list | last) | default('') -%}"
    "{%- set Response = '' -%}"
)


def is_go_template(template: str) -> bool:
    return bool(_GO_HINT.search(template))


def go_to_jinja(template: str) -> str:
    """Convert the single-turn subset of Ollama's Go templates to a Jinja chat template."""
    out = [_JINJA_PRELUDE]
    pos = 0
    for m in _GO_TAG.finditer(template):
        out.append(_literal(template[pos : m.start()]))
        left = "-" if m.group(1) else "+"
        right = "-" if m.group(5) else "+"
        if m.group(3):
            out.append(f"{{%{left} if {_go_var(m.group(3))} {right}%}}")
        elif m.group(4):
            out.append(f"{{{{{m.group(1)} {_go_var(m.group(4))} {m.group(5)}}}}}")
        else:
            out.append(f"{{%{left} endif {right}%}}")
        pos = m.end()
    out.append(_literal(template[pos:]))
    out.append("{{ '' }}")  # keeps a trailing newline (Jinja drops the source's last one)
    return "".join(out)


def _go_var(name: str) -> str:
    if name not in _GO_VARS:
        raise InvalidParameter(
            f"template: Go template variable .{name} is not supported (only .System, "
            ".Prompt, .Response); use a Jinja chat template instead",
            param="template",
        )
    return name


def _literal(text: str) -> str:
    if "{{" in text or "{%" in text or "{#" in text:
        raise InvalidParameter(
            "template: unsupported Go template syntax (only {{ .System }}, {{ .Prompt }}, "
            "{{ .Response }} and {{ if .X }}...{{ end }}); use a Jinja chat template instead",
            param="template",
        )
    return text


def check_template(template: str) -> str:
    """Convert a Go template; compile and try a Jinja one (errors name the problem)."""
    source = go_to_jinja(template) if is_go_template(template) else template
    try:
        ChatTemplate(source).render(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        )
    except TemplateRenderError as exc:
        raise InvalidParameter(f"template: {exc}", param="template") from exc
    except Exception as exc:  # noqa: BLE001 - jinja2 syntax errors and the like
        raise InvalidParameter(f"template does not compile: {exc}", param="template") from exc
    return source


def create_model(
    store: ModelStore,
    name: str,
    definition: ModelDefinition,
    *,
    base_dir: Path | None = None,
    allow_paths: bool = True,
) -> Manifest:
    """Write the manifest of a custom model. ``allow_paths`` is False for network
    clients: they may only build on models already in the store."""
    check_name(name)
    if name == EMBEDDED_NAME:
        raise InvalidParameter(f"{EMBEDDED_NAME} is the built-in model; choose another name")
    base = _base_manifest(store, definition.from_, base_dir, allow_paths)
    params = {k: v for k, v in base.parameters.items()}
    params.update(
        ModelParameters.model_validate(definition.parameters).model_dump(exclude_none=True)
    )
    template = check_template(definition.template) if definition.template else base.template
    manifest = Manifest(
        name=name,
        files=base.files,
        embedded=base.embedded,
        quant=base.quant,
        parent=definition.from_,
        system=definition.system if definition.system is not None else base.system,
        template=template,
        parameters=params,
        source={"created_from": definition.from_},
        adapters=[
            *base.adapters,
            *(_adapter(store, a, base_dir, allow_paths) for a in definition.adapters),
        ],
    )
    store.write(manifest)
    return manifest


def _base_manifest(
    store: ModelStore, base: str, base_dir: Path | None, allow_paths: bool
) -> Manifest:
    base = base.strip()
    if base == EMBEDDED_NAME and store.get(base) is None:
        return Manifest(name=EMBEDDED_NAME, embedded=True, quant="Q4_1")
    if is_local_path(base):
        if not allow_paths:
            raise InvalidParameter(
                "'from' must be a model name; files cannot be given over the API", param="from"
            )
        path = Path(base).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        info = read_gguf(path)
        ref = store.import_file(path)
        return Manifest(name="file", files=[ref], quant=info.quantization)
    check_name(base)
    found = store.get(base)
    if found is not None:
        return found
    if hub_source(base) is not None:
        raise ModelNotFound(f"base model {base!r} is not in the store; pull it first")
    raise unknown_model(base, store.names())


def _adapter(store: ModelStore, item: str, base_dir: Path | None, allow_paths: bool) -> AdapterRef:
    """``PATH[:scale]`` (a file, copied into the store) or ``sha256:<hex>[:scale]`` (a blob
    already there: all a network client may name)."""
    text = item.strip()
    blob = text.startswith("sha256:")
    ref, sep, tail = (text[:71], text[71:72], text[72:]) if blob else text.rpartition(":")
    try:
        scale = float(tail) if sep else 1.0
    except ValueError:
        sep, scale = "", 1.0
    ref = ref if sep else text
    if not math.isfinite(scale) or (sep and sep != ":"):
        raise InvalidParameter(f"adapters: {item!r}: expected PATH[:scale]", param="adapters")
    if blob:
        path = store.blob_path("sha256:" + check_digest(ref))
        if not path.is_file():
            raise ModelNotFound(f"adapters: blob {ref} is not in the store", param="adapters")
        return AdapterRef(ref, path.stat().st_size, ref.replace(":", "-"), scale)
    if not allow_paths:
        raise InvalidParameter(
            "adapters: files cannot be given over the API; name a blob in the store (sha256:<hex>)",
            param="adapters",
        )
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ModelNotFound(f"adapter file not found: {path}")
    return AdapterRef(**asdict(store.import_file(path)), scale=scale)
