"""Rendering many conversations with one chat template, jinja running once per conversation shape.

jinja spends ~40 us on each render, half of it building the render's context, and prepare renders every
conversation twice (whole, and its prompt): 8 s of a 100,000-row prepare. But a template that uses a
message's content only to write it out (alone, or joined with `+` or `~` to other strings, in an output
tag) renders every conversation of one shape (its roles, and whether the generation prompt is added) as
the same text around the contents. So each shape is rendered once, with numbered markers for contents,
and each conversation of that shape is that text with its contents in the markers' places.

Whether a template is of that kind is read from its syntax tree, strictly: contents may be read only as
`message['content']` or `message.content` of a message of the loop over `messages` (or of
`messages[i]`), and only to write them out; a message may be used only for its role or content; `messages`
only for that loop, an index, or `| length`; and no loop may look at `loop.previtem`, `nextitem` or `cycle`.
Anything else (a content trimmed, tested, compared, measured or stored, written inside a `{% set %}` or
`{% filter %}` block, a message passed to a macro or to `tojson`) and every conversation is rendered by jinja, as is a conversation whose content holds the
marker character, and a shape whose rendering does not hold each marker once, in order.
"""

import functools
import operator
import re
from itertools import chain
from typing import Any

import jinja2
from jinja2 import nodes

from services.data.records import Message

_MARK = "\ue000"  # a private-use character: the markers' delimiter
_MARKER = re.compile(f"{_MARK}(\\d+){_MARK}")
_ROLE, _CONTENT = "role", "content"
_role_of, _content_of = operator.itemgetter(_ROLE), operator.itemgetter(_CONTENT)
_LOOP_NEIGHBOURS = {"previtem", "nextitem", "cycle"}


def render_conversations(
    tokenizer: Any, conversations: list[list[Message]], template: str, generation: bool
) -> list[str]:
    """What `tokenizer.apply_chat_template(conversations, tokenize=False, ...)` gives, fewer times."""
    if not conversations:
        return []
    if not writes_contents_verbatim(template):
        return _jinja(tokenizer, conversations, template, generation)
    shapes = [tuple(map(_role_of, conversation)) for conversation in conversations]
    contents = [tuple(map(_content_of, conversation)) for conversation in conversations]
    layouts = {shape: _layout(tokenizer, shape, template, generation) for shape in dict.fromkeys(shapes)}
    # One test of every content at once; only when some content holds the marker is each one tested.
    marked = _MARK in "".join(map(str, chain.from_iterable(contents)))
    if not marked and None not in layouts.values():
        # %-formatting fills a shape's layout in C (joining pieces and contents took 2.5x as long).
        return [layouts[shape] % content for shape, content in zip(shapes, contents, strict=True)]
    texts: list[str | None] = [None] * len(conversations)
    by_jinja: list[int] = []
    for index, (shape, content) in enumerate(zip(shapes, contents, strict=True)):
        layout = layouts[shape]
        if layout is None or (marked and any(_MARK in str(text) for text in content)):
            by_jinja.append(index)
        else:
            texts[index] = layout % content
    for index, text in zip(
        by_jinja, _jinja(tokenizer, [conversations[i] for i in by_jinja], template, generation), strict=True
    ):
        texts[index] = text
    return texts  # type: ignore[return-value]  # every index was filled above


def _jinja(tokenizer: Any, conversations: list[list[Message]], template: str, generation: bool) -> list[str]:
    if not conversations:
        return []
    return tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=generation, chat_template=template
    )


def _layout(tokenizer: Any, roles: tuple[str, ...], template: str, generation: bool) -> str | None:
    """The rendering of a conversation of these roles as a %-format with one `%s` per content, in order, or
    None when the rendering does not write each content exactly once, in order."""
    marked = [{"role": role, "content": f"{_MARK}{i}{_MARK}"} for i, role in enumerate(roles)]
    rendered = _jinja(tokenizer, [marked], template, generation)[0]
    parts = _MARKER.split(rendered)
    pieces, order = parts[0::2], [int(number) for number in parts[1::2]]
    if order != list(range(len(roles))) or any(_MARK in piece for piece in pieces):
        return None
    return "%s".join(piece.replace("%", "%%") for piece in pieces)


@functools.lru_cache(maxsize=16)
def writes_contents_verbatim(template: str) -> bool:
    """Whether the template uses contents only to write them out (the module's docstring says how strictly)."""
    try:
        tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateSyntaxError:
        return False  # e.g. transformers' {% generation %} tag, which this environment does not know
    parents: dict[int, nodes.Node] = {}
    for parent in tree.find_all(nodes.Node):
        for child in parent.iter_child_nodes():
            parents[id(child)] = parent
    message_names = {
        loop.target.name
        for loop in tree.find_all(nodes.For)
        if isinstance(loop.target, nodes.Name) and _is_messages(loop.iter)
    }
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_name(node.node, "loop") and node.attr in _LOOP_NEIGHBOURS:
            return False
        key = _key_of(node)
        if key == _CONTENT and not (_is_message(node.node, message_names) and _only_written(node, parents)):
            return False
        if isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name in message_names and not _used_for_a_field(node, parents):
                return False
            if node.name == "messages" and not _messages_use_allowed(node, parents, message_names):
                return False
    return True


def _key_of(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _is_name(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name


def _is_messages(node: nodes.Node) -> bool:
    """`messages`, or a slice of it."""
    return _is_name(node, "messages") or (
        isinstance(node, nodes.Getitem)
        and _is_name(node.node, "messages")
        and isinstance(node.arg, nodes.Slice)
    )


def _is_message(node: nodes.Node, message_names: set[str]) -> bool:
    """A loop's message, or `messages[i]`."""
    if isinstance(node, nodes.Name):
        return node.name in message_names
    return (
        isinstance(node, nodes.Getitem)
        and _is_name(node.node, "messages")
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, int)
    )


def _used_for_a_field(node: nodes.Node, parents: dict[int, nodes.Node]) -> bool:
    parent = parents.get(id(node))
    return (
        isinstance(parent, nodes.Getattr | nodes.Getitem)
        and parent.node is node
        and _key_of(parent)
        in {
            _ROLE,
            _CONTENT,
        }
    )


def _messages_use_allowed(node: nodes.Node, parents: dict[int, nodes.Node], message_names: set[str]) -> bool:
    parent = parents.get(id(node))
    if isinstance(parent, nodes.For) and parent.iter is node:
        return True
    if isinstance(parent, nodes.Filter) and parent.node is node and parent.name == "length":
        return True
    if isinstance(parent, nodes.Getitem) and parent.node is node:
        if isinstance(parent.arg, nodes.Slice):  # only as a loop's sequence
            loop = parents.get(id(parent))
            return isinstance(loop, nodes.For) and loop.iter is parent
        return _is_message(parent, message_names) and _used_for_a_field(parent, parents)
    return False


def _only_written(node: nodes.Node, parents: dict[int, nodes.Node]) -> bool:
    """Whether `node` reaches an output tag through string joins alone, and that tag writes to the result
    (not into a `{% set %}` block, a `{% filter %}`, a macro or a call block, which could change it)."""
    parent = parents.get(id(node))
    while isinstance(parent, nodes.Add | nodes.Concat):
        parent = parents.get(id(parent))
    if not isinstance(parent, nodes.Output):
        return False
    while (parent := parents.get(id(parent))) is not None:
        if not isinstance(parent, nodes.Template | nodes.For | nodes.If):
            return False
    return True
