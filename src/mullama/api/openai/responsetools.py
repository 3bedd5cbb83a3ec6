"""The tools of a Responses request as the chat path serves them, in the shapes Codex CLI
sends (read from its source and checked against its recorded first request,
tests/data/agents/codex_first_request.json):

- ``function`` tools become chat function tools;
- ``namespace`` tools (a group of function tools under one name, ``multi_agent_v1``) are
  flattened: each function is offered to the model as ``<namespace>.<name>``, and a call
  of it is returned as OpenAI returns it, ``{"type": "function_call", "namespace":
  "multi_agent_v1", "name": "spawn_agent", ...}``, which is how the client routes it
  back; a call sent back in the input (with its ``namespace``) is the flat name again;
- hosted tools (``web_search``, ``file_search``, ``code_interpreter``...: OpenAI runs
  them, a local server has none), the kinds the chat path cannot hold to a grammar
  (``custom`` free-form tools) and types Mullama does not know are left out of what the
  model sees and reported as ignored (refused with --strict-fields), unless
  ``tool_choice`` forces one: then a 400 names it, since the client relies on that call;
- tools in an ``additional_tools`` input item (Codex with its default model) join the
  request's tools.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidParameter
from .. import fields

# OpenAI's hosted tools, named by their prefix (web_search_preview_2025_03_11), for the
# errors' words; any type but function and namespace is left out or refused alike.
HOSTED = ("web_search", "file_search", "code_interpreter", "computer", "image_generation",
          "mcp", "tool_search")  # fmt: skip
_FUNCTION_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
# Function tool fields that change nothing here: deferred loading (every tool is shown),
# who may call it, the shape of its output.
_FUNCTION_IGNORED = frozenset({"defer_loading", "allowed_callers", "output_schema"})
_MAX_NAME = 64


def flat_name(namespace: str, name: str) -> str:
    """The name a namespaced function has in the chat request (and for the model):
    ``namespace.name``, shortened with a hash when longer than a tool name may be."""
    joined = f"{namespace}.{name}"
    if len(joined) <= _MAX_NAME:
        return joined
    digest = hashlib.blake2b(joined.encode(), digest_size=4).hexdigest()
    return f"{joined[: _MAX_NAME - 9]}.{digest}"


def _kind(raw: Any) -> str:
    kind = raw.get("type") if isinstance(raw, dict) else None
    return kind if isinstance(kind, str) else repr(kind)


@dataclass
class ResponseTools:
    """A Responses request's tools, as chat tools and the names to write calls back."""

    chat: list[dict[str, Any]] = field(default_factory=list)
    # flat chat name -> (namespace, name) of a namespaced function
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # the types not served

    @classmethod
    def of(cls, tools: list[dict[str, Any]] | None, items: Any = None) -> ResponseTools:
        """The request's ``tools``, and those of its input's ``additional_tools`` items
        (``items``: the input; Codex's way of adding tools in the conversation)."""
        out = cls()
        given = [(f"tools[{i}]", raw) for i, raw in enumerate(tools or [])]
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get("type") == "additional_tools":
                added = item.get("tools")
                if not isinstance(added, list):
                    raise InvalidParameter(f"input[{i}].tools must be a list of tools", param=f"input[{i}].tools")  # fmt: skip
                given += [(f"input[{i}].tools[{k}]", raw) for k, raw in enumerate(added)]
        for where, raw in given:
            kind = _kind(raw)
            if kind == "function":
                out.chat.append(_function(raw, where))
            elif kind == "namespace":
                out._namespace(raw, where)
            else:
                out._leave_out(kind, where)
        names = [t["function"]["name"] for t in out.chat]
        if len(set(names)) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})[0]
            raise InvalidParameter(f"two tools are named {twice!r}", param="tools")
        return out

    def _namespace(self, raw: dict[str, Any], where: str) -> None:
        ns = raw.get("name")
        if not isinstance(ns, str) or not ns:
            raise InvalidParameter(f"{where}.name is required (a string)", param=f"{where}.name")
        inner = raw.get("tools")
        if not isinstance(inner, list):
            raise InvalidParameter(f"{where}.tools must be a list of tools", param=f"{where}.tools")  # fmt: skip
        about = raw.get("description")
        for k, tool in enumerate(inner):
            kind = _kind(tool)
            if kind != "function":
                self._leave_out(kind, f"{where}.tools[{k}]")
                continue
            spec = _function(tool, f"{where}.tools[{k}]")
            name = spec["function"]["name"]
            flat = flat_name(ns, name)
            spec["function"]["name"] = flat
            if isinstance(about, str) and about:
                desc = spec["function"].get("description") or ""
                spec["function"]["description"] = f"{desc}\n\n(In {ns}: {about})".strip()
            self.namespaced[flat] = (ns, name)
            self.chat.append(spec)

    def _leave_out(self, kind: str, where: str) -> None:
        """A tool Mullama does not serve (hosted, free-form, or a type it does not know:
        clients add tool types as they add fields): out of the prompt and reported, or
        refused with --strict-fields."""
        if fields.strict():
            hosted = kind.startswith(HOSTED)
            why = "a hosted tool, which a local server does not have" if hosted else "not a tool type Mullama serves"  # fmt: skip
            raise InvalidParameter(
                f"{where}: {kind!r} is {why}; only function and namespace tools are served",
                param=f"{where}.type",
            )
        self.left_out.append(kind)
        fields.ignored(f"tools[{kind}]", declared=False)  # the type is the client's word

    def call(self, chat_name: str) -> dict[str, str]:
        """The ``name`` (and ``namespace``) fields of a call's output item."""
        found = self.namespaced.get(chat_name)
        if found is None:
            return {"name": chat_name}
        return {"name": found[1], "namespace": found[0]}

    def choice(self, choice: str | dict[str, Any]) -> Any:
        """``tool_choice`` in the chat request's terms; a hosted tool it forces is a 400."""
        if isinstance(choice, str):
            if choice == "required" and not self.chat and self.left_out:
                raise InvalidParameter(
                    "tool_choice 'required' needs a function tool; the request's other "
                    f"tools ({', '.join(self.left_out)}) are not served by Mullama",
                    param="tool_choice",
                )
            return choice
        kind = _kind(choice)
        if kind == "function":
            return {"type": "function", "function": {"name": self._chosen(choice)}}
        if kind == "allowed_tools":
            return self._allowed(choice)
        what = "a hosted tool" if kind.startswith(HOSTED) else "a kind of tool it does not serve"
        raise InvalidParameter(
            f"tool_choice forces the tool {kind!r}, which Mullama does not have ({what}); "
            "it serves none, auto, required, a function and allowed_tools",
            param="tool_choice",
        )

    def _chosen(self, choice: dict[str, Any]) -> str:
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParameter(
                "tool_choice of type function needs the function's name", param="tool_choice.name"
            )
        ns = choice.get("namespace")
        if isinstance(ns, str) and ns:
            return flat_name(ns, name)
        if any(t["function"]["name"] == name for t in self.chat):
            return name
        inner = [flat for flat, (_, n) in self.namespaced.items() if n == name]
        return inner[0] if len(inner) == 1 else name

    def _allowed(self, choice: dict[str, Any]) -> Any:
        """``allowed_tools``: the model may call only those tools (``mode`` auto or
        required); the others stay out of the prompt."""
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise InvalidParameter("tool_choice.mode must be auto or required", param="tool_choice.mode")  # fmt: skip
        listed = choice.get("tools")
        if not isinstance(listed, list):
            raise InvalidParameter("tool_choice.tools must be a list", param="tool_choice.tools")
        allowed = set()
        for t in listed:
            if _kind(t) == "function":
                allowed.add(self._chosen(t))
            elif _kind(t) == "namespace" and isinstance(t.get("name"), str):
                allowed.update(f for f, (ns, _) in self.namespaced.items() if ns == t["name"])
        self.chat = [t for t in self.chat if t["function"]["name"] in allowed]
        if mode == "required" and not self.chat:
            raise InvalidParameter(
                "tool_choice requires a call of one of its tools, and none of them is a "
                "function Mullama serves",
                param="tool_choice.tools",
            )
        return mode


def _function(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A function tool in the chat request's shape; its fields Mullama does not use are
    reported (unknown ones refused with --strict-fields)."""
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidParameter(f"{where}.name is required (a string)", param=f"{where}.name")
    for key in raw:
        if key in _FUNCTION_KEYS or raw[key] in (None, False, [], {}):
            continue
        if key in _FUNCTION_IGNORED:
            fields.ignored(f"tools[].{key}")
        else:
            fields.unknown(f"tools[].{key}")
    fn = {k: raw[k] for k in ("name", "description", "parameters", "strict") if k in raw}
    return {"type": "function", "function": fn}
