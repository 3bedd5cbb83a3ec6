"""The budget of one chat-template render, and the measures that keep to it (the sandbox
that enforces them is engine/template_sandbox.py).

A chat template is untrusted code (a model file's, or a custom model's creator's). Jinja's
sandbox keeps it away from Python's internals; the budget bounds what one render may
cost, and every way of spending counts against it:

- steps (MAX_STEPS): each loop iteration (a ``for`` over anything: a range, a string, a
  list, a dict, a generator; a recursive loop's every level), each call, filter,
  attribute or item read and operator; an operation that walks n items in Python (a
  filter such as ``select`` or ``unique``, or measuring a value before it becomes text)
  costs n steps, and building n characters or items in C (``~``, ``*``, ``%``, ``join``,
  ``replace``...) costs n // CHARS_PER_STEP steps, so the characters one render may
  build in all are bounded too;
- time (MAX_SECONDS), checked at every step;
- size (MAX_SIZE): no value (string, list) over MAX_SIZE characters or items. Where the
  size of a result can be known beforehand it is refused before it is built: ``'x' * n``,
  ``a ~ b``, ``'%9999999s' % x``, ``'{:9999999}'.format(x)``, ``join``, ``replace``,
  ``indent``, ``wordwrap``, ``format``, ``tojson``, a list or a dict made to text (the
  guards below). A literal (``[a, a]``) is measured as it is made, so that values shared
  many times over cannot nest into an exponential structure.

A render that goes past a limit fails with TemplateLimit (a client error: the template,
not the daemon, is at fault).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

from jinja2.filters import make_attrgetter
from jinja2.runtime import Undefined
from jinja2.utils import Namespace, pass_environment

if TYPE_CHECKING:
    from .template_sandbox import BoundedEnvironment

MAX_STEPS = 2_000_000
MAX_SECONDS = 5.0
MAX_SIZE = 8 * 1024 * 1024  # characters (or items) in one value, and in the output
CHARS_PER_STEP = 16  # building this many characters (or items) costs one step


class TemplateRenderError(ValueError):
    """The template could not render these messages (a client-side problem)."""


class TemplateLimit(TemplateRenderError):
    """A render went past its budget of steps, time or size."""


def over_budget(what: str) -> TemplateLimit:
    return TemplateLimit(f"chat template ran out of its budget: {what}")


def too_big(n: int) -> TemplateLimit:
    return over_budget(f"it builds a value of {n} items (the limit is {MAX_SIZE})")


def too_many_steps() -> TemplateLimit:
    return over_budget(f"it took more than {MAX_STEPS} steps (a loop that does not end?)")


# ---- measuring a value before it becomes text ---------------------------------------


# Characters that repr() or JSON write as an escape of up to 10 characters (besides the
# common ones counted one by one): other control characters, C1 controls, line and
# paragraph separators, lone surrogates.
_ESCAPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _quoted(s: str, ascii_only: bool) -> int:
    """About the length of ``s`` written inside repr() or JSON: quotes, escapes, and with
    ``ascii_only`` each other character as ``\\uXXXX`` (or two of them)."""
    n = len(s) + 2 + sum(s.count(c) for c in "\\\"'\n\r\t")
    n += 9 * _ESCAPED.subn("", s)[1]
    if ascii_only and not s.isascii():
        n += 11 * (len(s) - len(s.encode("ascii", "ignore")))
    return n


def size_of(
    value: Any, limit: int, visits: int, *, quote_top: bool = False,
    ascii_only: bool = False, indent: int = 0,
) -> tuple[int, int]:  # fmt: skip
    """About the length of ``value`` as text (``str()``, or JSON with ``indent``): never
    less, except for a rare escape. Returns (size, items visited). Raises TemplateLimit
    as soon as the size passes ``limit`` or the items visited pass ``visits``: a
    structure that shares one list many times over is refused without being walked."""
    if isinstance(value, str) and not quote_top and not ascii_only:
        if len(value) > limit:
            raise too_big(len(value))
        return len(value), 0
    size = 0
    seen = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        seen += 1
        if seen > visits:
            raise too_many_steps()
        if indent and depth:
            size += 1 + indent * depth  # a new line, indented
        if isinstance(v, str):
            size += (
                len(v)
                if depth == 0 and not quote_top and not ascii_only
                else _quoted(v, ascii_only)
            )
        elif isinstance(v, list | tuple | dict | Namespace):
            if isinstance(v, Namespace):
                size += 12
                v = v._Namespace__attrs  # type: ignore[attr-defined]
            size += 2 + 2 * len(v) * (2 if isinstance(v, dict) else 1)
            if size > limit:  # before pushing its items
                raise too_big(size)
            if isinstance(v, dict):
                for k, x in v.items():
                    stack.append((k, depth + 1))
                    stack.append((x, depth + 1))
            else:
                stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, bool) or v is None:
            size += 5
        elif isinstance(v, int):
            size += 2 + v.bit_length() * 31 // 100
        elif isinstance(v, Undefined):
            size += 9
        else:  # a number, or an object whose text is its short repr (a macro, a cycler)
            size += 64
        if size > limit:
            raise too_big(size)
    return size, seen


# ---- formats: % and str.format ------------------------------------------------------

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)")
SPEC_NUMBERS = re.compile(r"\d+")


def number(n: Any) -> int:
    if isinstance(n, int) and not isinstance(n, bool):
        return abs(n)
    return 0


def percent_widths(fmt: str, args: Any) -> tuple[int, bool]:
    """The widths and precisions a printf-style format asks for, in all (``*`` taken from
    the arguments), and whether it writes a repr (%r, %a)."""
    positional = args if isinstance(args, tuple) else (args,)
    total, i, reprs = 0, 0, False
    for m in _PERCENT.finditer(fmt):
        width, precision, kind = m.groups()
        if kind == "%":
            continue
        for n in (width, precision):
            if n == "*":
                total += number(positional[i]) if i < len(positional) else 0
                i += 1
            elif n:
                total += int(n)
        reprs = reprs or kind in "ra"
        i += 1
    return total, reprs


# ---- guards: what filters and str methods are given, measured before they run -------


@pass_environment
def bounded_sum(
    env: BoundedEnvironment, iterable: Any, attribute: Any = None, start: Any = 0
) -> Any:
    """Jinja's ``sum``, with lists added up in one pass (``sum(start=[])`` copies the
    growing list at each item: quadratic)."""
    items = list(env.counted(iterable))
    if attribute is not None:
        get = make_attrgetter(env, attribute)
        items = [get(x) for x in items]
    if isinstance(start, list | tuple) and all(type(x) is type(start) for x in items):
        env.charge(len(start) + sum(map(len, items)))
        return type(start)(chain(start, *items))
    return sum(items, start)


# Filters that walk their input in Python: a step per item (or character).
WALKING_FILTERS = frozenset(
    {
        "batch",
        "dictsort",
        "groupby",
        "items",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "slice",
        "sort",
        "unique",
        "urlize",
        "wordwrap",
        "xmlattr",
        "urlencode",
        "pprint",
    }
)  # fmt: skip (join and sum walk through env.counted)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str,
         default: Any = None) -> Any:  # fmt: skip
    """A filter's or method's argument, passed by position (``i``) or by name."""
    return args[i] if len(args) > i else kwargs.get(name, default)


# A guard sees a call's arguments (a filter's value first) before the call; it raises
# TemplateLimit, charges the budget, or returns new positional arguments.
Guard = Callable[["BoundedEnvironment", tuple[Any, ...], dict[str, Any]], tuple[Any, ...] | None]


def _guard_join(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    """The items walked once, made text and measured with the separators."""
    items = list(env.counted(args[0]))
    attribute = _arg(args, kw, 2, "attribute")
    if attribute is not None:
        get = make_attrgetter(env, attribute)
        items = [get(x) for x in items]
        args = (*args[:2], None) if len(args) > 2 else args
        kw.pop("attribute", None)
    texts = [x if isinstance(x, str) else env.to_str(x) for x in items]
    sep = env.to_str(_arg(args, kw, 1, "d", ""))
    env.charge(sum(map(len, texts)) + len(sep) * max(0, len(texts) - 1))
    return (texts, *args[1:])


def _guard_replace(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text, old, new = (env.to_str(_arg(args, kw, i, n, "")) for i, n in
                      enumerate(("s", "old", "new")))  # fmt: skip
    if len(new) > len(old):
        n = text.count(old) if old else len(text) + 1
        count = _arg(args, kw, 3, "count")
        if isinstance(count, int) and count >= 0:
            n = min(n, count)
        env.charge(len(text) + n * (len(new) - len(old)))
    return None


def _guard_indent(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text, width = env.to_str(args[0]), _arg(args, kw, 1, "width", 4)
    pad = len(width) if isinstance(width, str) else number(width)
    env.charge(len(text) + (text.count("\n") + 2) * pad)
    return None


def _guard_wordwrap(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text, width = env.to_str(args[0]), number(_arg(args, kw, 1, "width", 79))
    wrap = env.to_str(_arg(args, kw, 3, "wrapstring") or "\n")
    env.charge(len(text) + (text.count("\n") + 2 + len(text) // max(1, width)) * len(wrap))
    return None


def _guard_format(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.check_percent(env.to_str(args[0]), kw or args[1:])
    return None


def _guard_center(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.charge(len(env.to_str(args[0])) + number(_arg(args, kw, 1, "width", 80)))
    return None


def _guard_to_text(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.to_str(args[0])
    return None


def _guard_case(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text = env.to_str(args[0])  # a few letters grow in upper case: 'ß' is 'SS'
    env.charge(len(text) if text.isascii() else 3 * len(text))
    return None


def _guard_escape(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text = env.to_str(args[0])  # '&' is '&amp;'
    env.charge(len(text) + 4 * sum(text.count(c) for c in "&<>\"'"))
    return None


def _guard_escaping(factor: int) -> Guard:
    """For filters that escape what they are given (a dict, for urlencode and xmlattr),
    up to ``factor`` times its size."""

    def guard(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
        env.charge(factor * env.measure(args[0]))
        return None

    return guard


def _guard_batch(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.charge(number(_arg(args, kw, 1, "linecount")))  # the last list filled up to n
    return None


def _guard_slice(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.tick(number(_arg(args, kw, 1, "slices")))  # n lists, made one by one
    return None


def _guard_tojson(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    """chat_template._tojson: (value, ensure_ascii, indent, separators, sort_keys)."""
    ascii_only = bool(_arg(args, kw, 1, "ensure_ascii", False))
    indent = _arg(args, kw, 2, "indent")
    width = len(indent) if isinstance(indent, str) else number(indent)
    env.charge(env.measure(args[0], quote_top=True, ascii_only=ascii_only, indent=width))
    return None


def _guard_pprint(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    env.charge(2 * env.measure(args[0], quote_top=True, indent=1))
    return None


def _guard_striptags(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text = env.to_str(args[0])  # markupsafe copies the rest of the text at each tag
    env.tick(len(text) * (text.count("<") + 1) // CHARS_PER_STEP)
    return None


def _guard_urlize(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    text = env.to_str(args[0])  # each link gets its attributes
    extra = sum(len(v) for v in (*args[1:], *kw.values()) if isinstance(v, str))
    env.charge(2 * len(text) + (text.count(".") + text.count("@") + 1) * (64 + 2 * extra))
    return None


FILTER_GUARDS: dict[str, Guard] = {
    "join": _guard_join,
    "replace": _guard_replace,
    "indent": _guard_indent,
    "wordwrap": _guard_wordwrap,
    "format": _guard_format,
    "center": _guard_center,
    "string": _guard_to_text,
    "trim": _guard_to_text,
    "title": _guard_case,
    "upper": _guard_case,
    "lower": _guard_case,
    "capitalize": _guard_case,
    "truncate": _guard_to_text,
    "wordcount": _guard_to_text,
    "e": _guard_escape,
    "escape": _guard_escape,
    "forceescape": _guard_escape,
    "urlencode": _guard_escaping(12),
    "xmlattr": _guard_escaping(6),
    "batch": _guard_batch,
    "slice": _guard_slice,
    "tojson": _guard_tojson,
    "pprint": _guard_pprint,
    "striptags": _guard_striptags,
    "urlize": _guard_urlize,
}


# ---- str methods that can write more than they are given ----------------------------
# (called with the string first, then the method's arguments)


def _str_join(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    sep, items = args[0], list(env.counted(_arg(args, kw, 1, "iterable", ())))
    n = sum(len(x) for x in items if isinstance(x, str))
    env.charge(n + len(sep) * max(0, len(items) - 1))
    return (items,)


def _str_translate(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    table, longest = _arg(args, kw, 1, "table"), 1
    if isinstance(table, dict):
        env.tick(len(table))
        longest = max([len(v) for v in table.values() if isinstance(v, str)], default=1)
    env.charge(len(args[0]) * max(1, longest))
    return None


def _str_expandtabs(env: BoundedEnvironment, args: tuple, kw: dict) -> tuple | None:
    tabsize = number(_arg(args, kw, 1, "tabsize", 8))
    env.charge(len(args[0]) + args[0].count("\t") * tabsize)
    return None


STR_METHODS: dict[str, Guard] = {
    "join": _str_join,
    "replace": _guard_replace,
    "translate": _str_translate,
    "expandtabs": _str_expandtabs,
}
