"""Conversations -> (input_ids, labels), many at a time.

The result equals ftcommon.chat_format.training_example for every conversation (a test holds it to
that): the same template rendering, the same tokens, labels on every assistant turn up to and
including the end-of-turn token. It differs only in speed: templates are rendered for a whole batch
in one call, each distinct text is tokenized once, and the tokenizer's Rust batch encoder does the work.
"""

from collections.abc import Sequence
from typing import Any

from services.data.records import Message

IGNORE_INDEX = -100


def _render(tokenizer: Any, conversations: list[list[Message]], template: str, generation: bool) -> list[str]:
    if not conversations:
        return []
    return tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=generation, chat_template=template
    )


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # No offsets or masks are computed: only the ids, which is what prepare needs.
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def training_examples(
    tokenizer: Any, conversations: Sequence[Sequence[Message]], end_of_turn: str, chat_template: str
) -> list[tuple[list[int], list[int]]]:
    """One (input_ids, labels) per conversation. Equal conversations share the same two lists (callers
    copy before changing them): a data set with many exact duplicates is tokenized once per distinct row."""
    keys = [tuple((m["role"], m["content"]) for m in conversation) for conversation in conversations]
    distinct = list(dict.fromkeys(keys))
    encoded = dict(
        zip(distinct, _distinct_examples(tokenizer, distinct, end_of_turn, chat_template), strict=True)
    )
    return [encoded[key] for key in keys]


def _distinct_examples(
    tokenizer: Any, conversations: list[tuple[tuple[str, str], ...]], end_of_turn: str, chat_template: str
) -> list[tuple[list[int], list[int]]]:
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    # Every rendering a conversation needs: the whole of it, and around each assistant turn the
    # prompt before it (with the generation header) and the conversation through it; for the last
    # turn that is the whole conversation, rendered once.
    full_parts = [[{"role": r, "content": c} for r, c in conversation] for conversation in conversations]
    prompt_parts: list[list[Message]] = []
    through_parts: list[list[Message]] = []
    turns: list[list[tuple[int, int | None]]] = []  # per conversation: (prompt index, through index or None)
    for messages in full_parts:
        spans: list[tuple[int, int | None]] = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt_parts.append(messages[:turn])
            through = None
            if turn + 1 < len(messages):
                through_parts.append(messages[: turn + 1])
                through = len(through_parts) - 1
            spans.append((len(prompt_parts) - 1, through))
        turns.append(spans)
    full_texts = _render(tokenizer, full_parts, chat_template, generation=False)
    prompt_texts = _render(tokenizer, prompt_parts, chat_template, generation=True)
    through_texts = _render(tokenizer, through_parts, chat_template, generation=False)
    texts = list(dict.fromkeys([*full_texts, *prompt_texts, *through_texts]))
    ids_of = dict(zip(texts, _encode(tokenizer, texts), strict=True))
    examples = []
    for full_text, spans in zip(full_texts, turns, strict=True):
        full = list(ids_of[full_text])
        labels = [IGNORE_INDEX] * len(full)
        for prompt_index, through_index in spans:
            prompt = ids_of[prompt_texts[prompt_index]]
            start = len(prompt)
            end = len(full) if through_index is None else len(ids_of[through_texts[through_index]])
            if full[:start] != prompt:
                raise ValueError("the chat template does not render conversations as prefixes of each other")
            segment = full[start:end]
            stop = segment.index(end_of_turn_id) + 1 if end_of_turn_id in segment else len(segment)
            labels[start : start + stop] = segment[:stop]
        examples.append((full, labels))
    return examples


def preference_examples(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    rejected: Sequence[str],
    end_of_turn: str,
    chat_template: str,
) -> list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]:
    """One ((chosen ids, labels), (rejected ids, labels)) per pair. A pair is a conversation whose last
    message is the chosen answer, and the rejected answer to put in its place. Labels cover only that last
    answer, through its end-of-turn token: every earlier turn is the prompt both answers share."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    plain = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
    prompts = [messages[:-1] for messages in plain]
    with_rejected = [
        [*prompt, {"role": "assistant", "content": answer}]
        for prompt, answer in zip(prompts, rejected, strict=True)
    ]
    prompt_texts = _render(tokenizer, prompts, chat_template, generation=True)
    chosen_texts = _render(tokenizer, plain, chat_template, generation=False)
    rejected_texts = _render(tokenizer, with_rejected, chat_template, generation=False)
    texts = list(dict.fromkeys([*prompt_texts, *chosen_texts, *rejected_texts]))
    ids_of = dict(zip(texts, _encode(tokenizer, texts), strict=True))

    def answer_labelled(prompt_text: str, full_text: str) -> tuple[list[int], list[int]]:
        prompt, full = ids_of[prompt_text], list(ids_of[full_text])
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template does not render conversations as prefixes of each other")
        answer = full[len(prompt) :]
        stop = answer.index(end_of_turn_id) + 1 if end_of_turn_id in answer else len(answer)
        labels = [IGNORE_INDEX] * len(prompt) + answer[:stop] + [IGNORE_INDEX] * (len(answer) - stop)
        return full, labels

    return [
        (answer_labelled(prompt, chosen), answer_labelled(prompt, rejected_text))
        for prompt, chosen, rejected_text in zip(prompt_texts, chosen_texts, rejected_texts, strict=True)
    ]
