"""The sandbox a chat template renders in: Jinja's ImmutableSandboxedEnvironment, with
every operation counted against the budget of engine/template_budget.py. Jinja writes
some operations as plain Python (a ``for`` over its iterable, ``~``, list and dict
literals, the buffers of blocks and macros): its code generator is changed to route
those through the environment too."""

from __future__ import annotations

import functools
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import _PassArg
from markupsafe import EscapeFormatter, Markup

from .template_budget import (
    CHARS_PER_STEP,
    FILTER_GUARDS,
    MAX_SECONDS,
    MAX_SIZE,
    MAX_STEPS,
    SPEC_NUMBERS,
    STR_METHODS,
    WALKING_FILTERS,
    bounded_sum,
    over_budget,
    percent_widths,
    size_of,
    too_big,
    too_many_steps,
)

# ---- loops and ranges ---------------------------------------------------------------


class _Range:
    """``range`` for templates: a sequence whose iteration counts against the budget."""

    def __init__(self, env: BoundedEnvironment, *args: int) -> None:
        self._env = env
        self._range = range(*args)

    def __iter__(self) -> Iterator[int]:
        tick = self._env.tick
        for i in self._range:
            tick()
            yield i

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i: Any) -> Any:
        return self._range[i]


class _Counted:
    """What a ``for`` loops over: each item it yields is a step. Sized when the iterable
    is (``loop.length`` then does not walk it)."""

    __slots__ = ("_iterable", "_tick")

    def __init__(self, iterable: Any, tick: Callable[[], None]) -> None:
        self._iterable = iterable
        self._tick = tick

    def __iter__(self) -> Iterator[Any]:
        tick = self._tick
        for item in self._iterable:
            tick()
            yield item

    def __len__(self) -> int:
        return len(self._iterable)  # TypeError for a generator: LoopContext expects that


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with the operations it writes as plain Python routed
    through the environment: a loop's iterable, ``~`` and the literals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()  # ids of the For nodes' iter nodes

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.counted(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_operands(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit: Callable[..., None], node: nodes.Expr, frame: Frame) -> None:
        if getattr(node, "ctx", "load") != "load":  # a target: {% set a, b = ... %}
            visit(node, frame)
            return
        self.write("environment.literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._literal(super().visit_List, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        self._literal(super().visit_Tuple, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._literal(super().visit_Dict, node, frame)


# ---- str.format ---------------------------------------------------------------------


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with each field's width and value measured before
    it is written, and the fields' total kept under MAX_SIZE."""

    def __init__(self, env: BoundedEnvironment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._benv = env
        self._written = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a"):
            self._benv.measure(value, quote_top=True, ascii_only=conversion == "a")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        env = self._benv
        widths = sum(int(n) for n in SPEC_NUMBERS.findall(format_spec))
        size = widths + (0 if isinstance(value, int | float) else env.measure(value))
        if self._written + size > MAX_SIZE:
            raise too_big(self._written + size)
        out = super().format_field(value, format_spec)
        self._written += len(out)
        env.charge(len(out))
        return out


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    """The same for ``Markup.format``, which escapes each field."""


# ---- the environment ----------------------------------------------------------------


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()
        self.finalize = self._finalize
        self.globals["range"] = lambda *args: _Range(self, *args)
        del self.globals["lipsum"]  # paragraphs of lorem ipsum, by the million if asked
        self.filters["sum"] = bounded_sum
        self.filters = {name: self.bounded(f, name) for name, f in self.filters.items()}

    # -- the budget

    def begin(self) -> None:
        self._local.budget = _Budget()

    def end(self) -> None:
        self._local.budget = None

    def tick(self, cost: int = 1) -> None:
        budget = getattr(self._local, "budget", None)
        if budget is None:  # compiling: nothing is worked out ahead of a render (Jinja
            raise nodes.Impossible()  # would fold `[1]|slice(10**7)|list` unbudgeted)
        budget.steps += cost
        if budget.steps > MAX_STEPS:
            raise too_many_steps()
        if time.monotonic() > budget.deadline:
            raise over_budget(f"it ran for more than {MAX_SECONDS:g} s")

    def _steps_left(self) -> int:
        budget = getattr(self._local, "budget", None)
        return MAX_STEPS if budget is None else max(0, MAX_STEPS - budget.steps)

    def charge(self, n: int) -> None:
        """Building ``n`` characters or items (in C)."""
        if n > MAX_SIZE:
            raise too_big(n)
        self.tick(1 + n // CHARS_PER_STEP)

    def measure(self, value: Any, **how: Any) -> int:
        """The size of ``value`` as text (see size_of), each item looked at a step."""
        size, seen = size_of(value, MAX_SIZE, self._steps_left(), **how)
        self.tick(1 + seen)
        return size

    def built(self, value: Any) -> Any:
        """A value an operation returned: checked, and its building charged."""
        if isinstance(value, str | list | tuple | dict):
            self.charge(len(value))
        return value

    @staticmethod
    def checked(value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict) and len(value) > MAX_SIZE:
            raise too_big(len(value))
        return value

    def _check_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A call's arguments: no count or width over MAX_SIZE (``'x'.ljust(n)``)."""
        for v in (*args, *kwargs.values()):
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SIZE:
                raise over_budget(f"it passes the number {v}, too large")
            self.checked(v)

    def to_str(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        self.measure(value)
        return str(value)

    # -- what the generated code calls (see _CodeGenerator)

    def counted(self, iterable: Any) -> Any:
        if isinstance(iterable, _Range):  # counts itself
            return iterable
        return _Counted(iterable, self.tick)

    def literal(self, value: Any) -> Any:
        self.measure(value)
        return value

    def join_operands(self, eval_ctx: Any, operands: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: measured, then joined."""
        parts = [v if isinstance(v, str) else self.to_str(v) for v in operands]
        self.charge(sum(map(len, parts)))
        return markup_join(parts) if eval_ctx.autoescape else str_join(parts)

    def concat(self, pieces: Any) -> str:  # type: ignore[override]
        """Joins the output a block, a macro or a ``{% set %}`` block collected."""
        pieces = list(pieces)
        self.charge(sum(map(len, pieces)))
        return "".join(pieces)

    def _finalize(self, value: Any) -> Any:
        """Each ``{{ ... }}``: a value that is not text is measured before str()."""
        self.tick()
        if not isinstance(value, str):
            self.measure(value)
        return value

    # -- the sandbox's hooks

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.tick()
        __self._check_args(args, kwargs)
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (__self.counted(args[0]), *args[1:])
        elif isinstance(getattr(__obj, "__self__", None), str):  # a str (or Markup) method
            guard = STR_METHODS.get(getattr(__obj, "__name__", ""))
            if guard is not None:
                new = guard(__self, (__obj.__self__, *args), kwargs)
                if new is not None:
                    args = new
        return __self.built(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        return self.checked(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        if isinstance(argument, slice):  # a copy
            return self.built(super().getitem(obj, argument))
        return self.checked(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "**" and isinstance(right, int) and abs(right) > 4096:
            raise over_budget(f"it raises a number to the power {right}")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    if len(seq) * n > MAX_SIZE:
                        raise too_big(len(seq) * n)
                    if not isinstance(seq, str) and n > 1:  # n copies of what it holds
                        size = self.measure(seq) * n
                        if size > MAX_SIZE:
                            raise too_big(size)
        elif operator == "%" and isinstance(left, str):
            self.check_percent(left, right)
        result = self.built(super().call_binop(context, operator, left, right))
        if isinstance(result, int) and not isinstance(result, bool):
            if result.bit_length() > 65536:
                raise over_budget("it builds a number of more than 65536 bits")
        return result

    def check_percent(self, fmt: str, args: Any) -> None:
        """``fmt % args``: the widths asked for and the values written, measured."""
        widths, reprs = percent_widths(fmt, args)
        values = args.values() if isinstance(args, dict) else args if isinstance(
            args, tuple) else (args,)  # fmt: skip
        size = len(fmt) + widths + sum(self.measure(v, quote_top=reprs) for v in values)
        if size > MAX_SIZE:
            raise too_big(size)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, through _BoundedFormatter."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        text = value.__self__
        if not isinstance(text, str):
            return None
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            formatter = (
                _BoundedEscapeFormatter(self, escape=text.escape)
                if isinstance(text, Markup)
                else _BoundedFormatter(self)
            )
            return type(text)(formatter.vformat(text, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    # -- filters

    def bounded(self, f: Any, name: str = "") -> Any:
        """A filter that counts: a step, its input walked or read, its output checked
        (and for those whose output can outgrow their input, measured beforehand)."""
        skip = 1 if _PassArg.from_obj(f) is not None else 0
        guard = FILTER_GUARDS.get(name)
        walks = name in WALKING_FILTERS

        @functools.wraps(f)  # keeps Jinja's pass_context / pass_environment marks
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            self._check_args(args[skip + 1 :], kwargs)  # the value may be any number
            if len(args) > skip:
                value = self.checked(args[skip])
                if isinstance(value, str):
                    self.tick(len(value) if walks else len(value) // CHARS_PER_STEP)
                elif walks and hasattr(value, "__len__"):
                    self.tick(len(value))
                if guard is not None:
                    new = guard(self, args[skip:], kwargs)
                    if new is not None:
                        args = (*args[:skip], *new)
            return self.built(f(*args, **kwargs))

        return bounded
