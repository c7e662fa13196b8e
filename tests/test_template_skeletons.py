"""Rendering by conversation shape gives jinja's text for every conversation, and templates that do more
with a content than write it out are rendered by jinja."""

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ftcommon.chat_format import ALPACA_TEMPLATE, QUESTION_ANSWER_TEMPLATE
from services.data.template_skeletons import render_conversations, writes_contents_verbatim

# Each does something with a content besides writing it out, or hides where it is written.
NOT_VERBATIM = [
    "{% for m in messages %}{{ m['content'] | trim }}{% endfor %}",
    "{% for m in messages %}{% if m['content'] %}{{ m['content'] }}{% endif %}{% endfor %}",
    "{% for m in messages %}{% set x %}{{ m['content'] }}{% endset %}{{ x | trim }}{% endfor %}",
    "{% for m in messages %}{% filter upper %}{{ m['content'] }}{% endfilter %}{% endfor %}",
    "{% for m in messages %}{{ m | tojson }}{% endfor %}",
    "{% for m in messages %}{% if loop.previtem %}{{ loop.previtem['role'] }}{% endif %}{{ m.content }}{% endfor %}",
    "{{ messages[-1]['content'] }}",
    "{% for m in messages %}{{ m.content.strip() }}{% endfor %}",
    "{% macro say(x) %}{{ x['content'] }}{% endmacro %}{% for m in messages %}{{ say(m) }}{% endfor %}",
    "{% for m in messages %}{{ m['content'] if m['role'] == 'user' else '' }}{% endfor %}",
    "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}",  # tree allows; markers refuse
]
VERBATIM = "{% for m in messages[1:] %}{{ m.role ~ ': ' ~ m.content }}{% endfor %}{{ messages | length }}"
# Literal percent signs around every content: a shape's rendering is kept as a %-format.
PERCENT = "{% for m in messages %}{{ m.role }} 100%s %: {{ m.content }}%\n{% endfor %}"
PIECES = [
    "",
    " ",
    "  lead",
    "trail \n",
    "{{ braces }}",
    "{% raw %}",
    "\ue000",
    "\ue0000\ue000",
    "é’",
    "😀",
    "x",
    "%s",
    "%",
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


def conversations(count: int, seed: int) -> list[list[dict[str, str]]]:
    generator = random.Random(seed)
    result = []
    for _ in range(count):
        roles = (["system"] if generator.random() < 0.3 else []) + ["user", "assistant"] * generator.randint(
            1, 3
        )
        if generator.random() < 0.3:
            roles.pop()  # a prompt: ends with the user
        result.append(
            [
                {"role": r, "content": "".join(generator.choices(PIECES, k=generator.randint(0, 4)))}
                for r in roles
            ]
        )
    return result


def test_the_platform_s_templates_render_by_shape(tokenizer):
    assert all(
        writes_contents_verbatim(t)
        for t in (tokenizer.chat_template, ALPACA_TEMPLATE, QUESTION_ANSWER_TEMPLATE)
    )
    assert writes_contents_verbatim(VERBATIM) and writes_contents_verbatim(PERCENT)
    assert not any(writes_contents_verbatim(t) for t in NOT_VERBATIM[:-1])


@pytest.mark.parametrize("generation", [False, True])
@pytest.mark.parametrize("markers", [True, False], ids=["some contents hold the marker", "none does"])
def test_rendering_by_shape_gives_jinja_s_text(tokenizer, generation, markers):
    rows = conversations(300, seed=int(generation))
    if not markers:
        rows = [[{**m, "content": m["content"].replace("\ue000", "")} for m in row] for row in rows]
    assert any("\ue000" in m["content"] for row in rows for m in row) == markers
    templates = [
        tokenizer.chat_template,
        ALPACA_TEMPLATE,
        QUESTION_ANSWER_TEMPLATE,
        VERBATIM,
        PERCENT,
        *NOT_VERBATIM,
    ]
    for template in templates:
        jinja = tokenizer.apply_chat_template(
            rows, tokenize=False, add_generation_prompt=generation, chat_template=template
        )
        assert render_conversations(tokenizer, rows, template, generation) == jinja, template
