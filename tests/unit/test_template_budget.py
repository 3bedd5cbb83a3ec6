"""The chat-template budget (security issue 31): every loop iteration is a step, every
string operation is size-checked before it builds, a template that runs out of its
budget is marked, and the API probes templates off the event loop.

Each hostile template here once rendered without complaint (a 9M-iteration loop counted
as one step), or built its 48M-100M-character string before being refused (the peak
memory of the render shows it), or ran its work at compile time, outside any budget."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest

from mullama.api.toolsyntax import probe, template_tools
from mullama.engine.chat_template import MAX_SIZE, ChatTemplate, TemplateLimit
from mullama.errors import InvalidParameter

TEMPLATES = Path(__file__).parent / "templates"
HI = [{"role": "user", "content": "hi"}]
# A tool as clients send it (gpt-oss's and Seed-OSS's templates read its description and
# its parameters' properties).
TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "description": "d",
        "parameters": {"type": "object", "properties": {}},
    },
}
# Out of steps, or on a busy machine out of time first: either way, over the budget (the
# templates that exceed it here rendered to the end before it counted their loops).
SPENT = "ran out of its budget: it (took more than|ran for more than)"


def _render(source: str, messages: list | None = None, tools: list | None = None) -> str:
    return ChatTemplate(source).render(HI if messages is None else messages, True, tools)


def _refused_unbuilt(source: str) -> None:
    """Refused, and without building the value: the render's peak memory stays within a
    few times MAX_SIZE (the template's own strings, and what the budget lets a render
    build in all), below the 48M-100M characters these templates asked for."""
    tracemalloc.start()
    try:
        with pytest.raises(TemplateLimit):
            _render(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * MAX_SIZE, f"{peak} bytes at the peak"


# ---- every loop iteration counts ----------------------------------------------------


LOOPS = {
    "a string looped over twice (9M iterations)": (
        "{% set s = 'x' * 3000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    ),
    "a list looped over twice": (
        "{% set l = ('x' * 3000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}"
    ),
    "the messages looped over twice": (
        "{% for a in messages %}{% for b in messages %}{% endfor %}{% endfor %}"
    ),
    "a dict's items looped over": (
        "{% for m in messages %}{% for k, v in m|dictsort %}{% for c in v %}{% endfor %}"
        "{% endfor %}{% endfor %}"
    ),
    "a generator looped over": (
        "{% for a in messages|map(attribute='content') %}{% for c in a %}{% endfor %}{% endfor %}"
    ),
    "a filtered loop": (
        "{% for a in messages %}{% for b in messages if b %}{% endfor %}{% endfor %}"
    ),
}
BIG_CHAT = [{"role": "user", "content": "x" * 3000} for _ in range(3000)]


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_every_loop_iteration_is_a_step(name):
    with pytest.raises(TemplateLimit, match=SPENT):
        _render(LOOPS[name], BIG_CHAT)


def test_a_recursive_loop_counts_every_level():
    source = (
        "{% for item in tree.children recursive %}{% if item is mapping %}{{ loop(item.children) }}"
        "{% endif %}{% endfor %}"
    )
    tree: dict = {"children": []}
    for _ in range(100):  # 100 levels, each a list of 30,000 items
        tree = {"children": [*[""] * 30_000, tree]}
    env = ChatTemplate(source)._env
    template = env.from_string(source)
    env.begin()
    try:
        with pytest.raises(TemplateLimit, match=SPENT):
            "".join(template.generate(tree=tree))
    finally:
        env.end()


def test_work_is_never_done_at_compile_time():
    """Jinja folds constant expressions while compiling, outside any render's budget."""
    with pytest.raises(TemplateLimit, match="steps"):
        _render("{{ [1]|slice(3000000)|list|length }}")


def test_values_shared_many_times_over_cannot_nest_exponentially():
    """[a, a] doubles what a structure holds without building anything; comparing two
    such structures walks all of it."""
    source = (
        "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(26) %}"
        "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}{{ ns.a == ns.b }}"
    )
    with pytest.raises(TemplateLimit):
        _render(source)


# ---- no string over MAX_SIZE is built -----------------------------------------------


BUILDERS = {
    "~ of six 8M strings": "{% set s = 'x' * 8000000 %}{{ (s ~ s ~ s ~ s ~ s ~ s)|length }}",
    "% with a width": "{{ ('%99999999s' % 'x')|length }}",
    "% with a width given as *": "{{ ('%*s' % (99999999, 'x'))|length }}",
    "% with a precision": "{{ ('%.99999999f' % 1.5)|length }}",
    "the format filter with a width": "{{ '%99999999s'|format('x')|length }}",
    "str.format with a width": "{{ '{:99999999}'.format('x')|length }}",
    "str.format with many fields": "{{ ('{0:8000000}' * 12).format('x')|length }}",
    "join of a huge list": "{{ ([1] * 10000)|join('y' * 5000)|length }}",
    "str.join": "{{ ('y' * 5000).join(('x' * 10000)|list)|length }}",
    "replace": "{{ ('x' * 1000)|replace('x', 'y' * 100000)|length }}",
    "str.replace": "{{ ('x' * 1000).replace('x', 'y' * 100000)|length }}",
    "indent": "{{ ('a\\n' * 1000000)|indent('y' * 100)|length }}",
    "wordwrap": "{{ ('a b ' * 1000000)|wordwrap(2, wrapstring='y' * 100)|length }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(100)|length }}",
    "a list made text": "{{ (['x' * 4000000] * 20)|string|length }}",
    "a block collecting output": (
        "{% set x %}{% for i in range(1000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}"
        "{{ x|length }}"
    ),
    "tojson with a wide indent": "{{ ('x' * 300000)|list|tojson(indent=300)|length }}",
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_no_string_over_the_limit_is_built(name):
    _refused_unbuilt(BUILDERS[name])


def test_striptags_is_charged_for_its_quadratic_work():
    with pytest.raises(TemplateLimit, match="steps"):
        _render("{{ ('<a>' * 30000)|striptags }}")


def test_lipsum_is_gone():
    with pytest.raises(Exception, match="lipsum"):
        _render("{{ lipsum(1000000) }}")


def test_operations_within_the_limits_still_work():
    source = (
        "{{ [1, 2, 3]|join(',') }} {{ 'a%sb' % 'c' }} {{ '%-4s|' % 'x' }} {{ '{}-{:>3}'.format(1, 2) }}"
        " {{ {'a': [1, 'b']}|tojson }} {{ 'x' ~ 1 ~ none }} {{ 'ab'|replace('b', 'cd') }}"
        " {{ ('x' * 100000)|length }} {{ ([[1], [2]])|sum(start=[]) }}"
        "{% for k, v in {'a': 1, 'b': 2}|dictsort %} {{ k }}={{ v }}{{ loop.length }}{% endfor %}"
        "{% for item in [[1, [2, [3]]]] recursive %}{% if item is iterable %}({{ loop(item) }})"
        "{% else %}{{ item }}{% endif %}{% endfor %}"
    )
    assert _render(source) == (
        '1,2,3 acb x   | 1-  2 {"a": [1, "b"]} x1None acd 100000 [1, 2] a=12 b=22(1(2(3)))'
    )


def test_real_templates_render_a_long_conversation_within_the_budget():
    chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "a few words\n" * 200}
        for i in range(2000)
    ]
    for path in sorted(TEMPLATES.glob("*.jinja")):
        text = ChatTemplate(path.read_text()).render(chat, True, [TOOL])
        assert text.count("a few words") == 2000 * 200, path.name


# ---- a template that ran out of its budget is marked --------------------------------

SLOW_WHEN_LONG = (
    "{% if messages|length > 1 %}{% for i in range(5000000) %}{% endfor %}{% endif %}"
    "{% for m in messages %}{{ m.content }}{% endfor %}"
)


def test_a_template_over_its_budget_fails_fast_afterwards():
    template = ChatTemplate(SLOW_WHEN_LONG)
    two = [*HI, {"role": "assistant", "content": "hello"}]
    with pytest.raises(TemplateLimit, match=SPENT) as first:
        template.render(two)
    assert "marked" not in str(first.value)
    # The same input, or more: at once, saying why.
    for chat in (two, [*two, *HI]):
        with pytest.raises(TemplateLimit, match=SPENT + ".*marked"):
            template.render(chat)
    # A smaller input is tried (one oversized conversation does not take the template
    # away from everyone), and so is a render with tools, another shape.
    assert template.render(HI) == "hi"
    with pytest.raises(TemplateLimit) as with_tools:
        template.render(two, tools=[TOOL])
    assert "marked" not in str(with_tools.value)


# ---- probing for tools --------------------------------------------------------------

SLOW_WITH_TOOLS = (
    "{% if tools %}{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}"
    "{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
)


def test_a_probe_over_budget_fails_and_marks_the_template():
    source = SLOW_WITH_TOOLS + "{# sync #}"
    with pytest.raises(TemplateLimit, match=SPENT) as first:
        template_tools(source)
    assert "marked" not in str(first.value)
    with pytest.raises(TemplateLimit, match="marked"):
        template_tools(source)


def test_the_api_probes_off_the_event_loop():
    """While the probe renders (up to a whole budget), the event loop keeps turning; the
    request gets a 400 naming the budget, and the next one is refused at once."""
    source = SLOW_WITH_TOOLS + "{# async #}"

    async def main() -> tuple[int, BaseException | None, BaseException | None]:
        task = asyncio.create_task(probe(source))
        turns = 0
        while not task.done():
            await asyncio.sleep(0)
            turns += 1
        again = asyncio.create_task(probe(source))
        await asyncio.wait([again])
        return turns, task.exception(), again.exception()

    turns, first, again = asyncio.run(main())
    assert turns > 1
    assert isinstance(first, InvalidParameter) and first.status == 400
    assert first.param == "tools" and "budget" in first.message
    assert isinstance(again, InvalidParameter) and "marked" in again.message
    assert template_tools(None).system  # other templates are probed as before
