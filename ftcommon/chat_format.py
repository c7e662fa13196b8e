"""One way to turn a conversation into tokens, shared by data prep (training) and the gateway (serving).

Every prompt template is a Jinja chat template, so the template that trained a model is stored with
it and serves it: the model's own template, or one of the two plain-text ones below.
"""

from collections.abc import Sequence
from typing import Protocol

ALPACA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
)

QUESTION_ANSWER_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Question:\n' + message['content'] + '\n\n### Answer:\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
)

Message = dict[str, str | int]  # role, content and an optional weight


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    chat_template: str | None

    def apply_chat_template(self, conversation: Sequence[Message], **kwargs: object) -> object: ...

    def convert_tokens_to_ids(self, token: str) -> int: ...


def _ids(
    tokenizer: ChatTokenizer, messages: Sequence[Message], template: str | None, generation: bool
) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation, chat_template=template
    )
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)


def prompt_ids(
    tokenizer: ChatTokenizer, messages: Sequence[Message], chat_template: str | None = None
) -> list[int]:
    """The tokens a model sees before it answers the last user turn."""
    return _ids(tokenizer, messages, chat_template, generation=True)


def training_example(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    end_of_turn: str,
    chat_template: str | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a conversation; labels are -100 except on every assistant turn's answer
    tokens up to and including the end-of-turn token, which is where generation must learn to stop.
    An assistant turn with "weight": 0 (OpenAI's chat format) stays context and is not trained on."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    full = _ids(tokenizer, messages, chat_template, generation=False)
    labels = [-100] * len(full)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        start = len(_ids(tokenizer, messages[:turn], chat_template, generation=True))
        end = len(_ids(tokenizer, messages[: turn + 1], chat_template, generation=False))
        if full[:start] != _ids(tokenizer, messages[:turn], chat_template, generation=True):
            raise ValueError("the chat template does not render conversations as prefixes of each other")
        segment = full[start:end]
        stop = segment.index(end_of_turn_id) + 1 if end_of_turn_id in segment else len(segment)
        labels[start : start + stop] = segment[:stop]
    return full, labels
